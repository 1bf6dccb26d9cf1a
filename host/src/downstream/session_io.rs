//! One session's connection in both directions, driven by the session's single task: what the
//! client sends is read, and the outbound queue is written, from one `poll` ([`SessionIo`]).
//!
//! One owner for the connection, no second task and no lock between a reading and a writing
//! half: an idle session is one task parked on its socket, its queue and one timer
//! (docs/architecture.md). Reading and writing still go on side by side: a client that is slow
//! to read is still read while its output waits, up to the queue's bounds
//! (`pending_write_num`, `pending_write_bytes`) and the write deadline (`write_ms`).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Sleep, sleep, timeout};

use super::WRITE_BUFFER;
use crate::protocol::client::{Packet, SharedPacket};
use crate::protocol::gopush;
use crate::session::{CloseReason, Outbound, OutboundReceiver, SessionHandle};

/// What a transport's reading yields.
pub(crate) enum Inbound {
    Packet(Packet),
    /// A go-push JSON message (WebSocket text frames).
    GoPush(gopush::Request),
    /// The client closed the connection.
    Closed,
    /// The connection cannot go on (malformed or oversized frame, transport error).
    Failed(CloseReason, String),
}

/// A client connection (WebSocket after the upgrade, TCP after accept): frames in, frames out.
pub(crate) trait Transport: Send + Unpin {
    /// The next inbound message. Cancel-safe: a partly read frame stays in the transport.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;
    /// Gives the transport its session before the first read, for a transport whose reading
    /// answers the client on its own (WebSocket pongs and close replies).
    fn attach(&mut self, _session: &SessionHandle) {}
    /// Buffers one packet.
    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> io::Result<()>;
    /// Buffers one fan-out packet, using its shared encoding.
    fn put_shared(&mut self, packet: &SharedPacket) -> io::Result<()>;
    /// Buffers transport control bytes ([`Outbound::Control`]) as they are.
    fn put_control(&mut self, _frame: &[u8]) {}
    /// Buffers what tells the client why it is closed, if the transport can (WebSocket close
    /// frame); nothing buffered after it is sent.
    fn put_close(&mut self, reason: CloseReason, message: &str);
    /// Bytes buffered and not yet written.
    fn buffered(&self) -> usize;
    /// Writes what is buffered and flushes; `Ready(Ok)` once all of it is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the sending direction after the close was written (TCP: FIN, TLS: close_notify).
    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// After the shutdown: reads and discards what the client still sends, until its end of
    /// stream ([`poll_discard`]).
    fn poll_drain(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How long a closed session's connection is kept after its close was written and its
/// sending direction shut down, for the client to see the close and end its side
/// ([`poll_discard`]).
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Reads and discards until the peer's end of stream. Closing a socket whose input was not
/// all read makes the kernel answer with a reset, and a reset can destroy what was just
/// written (the error frame, the close frame) before the client reads it: a "lingering close"
/// (RFC 9112 section 9.6) avoids it.
pub(crate) fn poll_discard<R: AsyncRead + Unpin>(io: &mut R, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut scratch = [0u8; 1024];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(()));
        }
    }
}

/// What [`SessionIo::poll_event`] reports.
pub(crate) enum Event {
    Inbound(Inbound),
    /// The socket pushed back: the write deadline is set ([`SessionIo::poll_write_deadline`]).
    WriteBlocked,
    /// The close was written: nothing more goes out.
    CloseWritten,
    /// Writing failed: the session is aborted (`transport_error`), nothing more goes out.
    WriteFailed,
}

/// How long an aborted session may take to send the close notice (error frame and
/// WebSocket close frame) after what it had already buffered; past it the socket is dropped.
pub(crate) const ABORT_NOTICE_GRACE: Duration = Duration::from_millis(250);

/// A session's transport and outbound queue, polled together.
pub(crate) struct SessionIo<T> {
    pub(crate) transport: T,
    /// The queue, and through it the session ([`OutboundReceiver::session`]).
    queue: OutboundReceiver,
    sent: Counter,
    /// `write_ms`, kept in 4 bytes (a `Duration` is 16, in every idle session).
    write_timeout_ms: u32,
    /// Fires when the socket must have taken what is buffered: `write_ms` after it first
    /// pushed back; past it the session is a slow consumer. Exists only while the socket
    /// pushes back (its deadline is the write deadline: no copy of it in every session).
    write_timer: Option<Pin<Box<Sleep>>>,
    /// The close was taken from the queue: nothing more is taken.
    closed: bool,
    /// Nothing more is written (the close went out, or a write failed).
    done: bool,
}

impl<T: Transport> SessionIo<T> {
    /// `sent` counts the packets written (`wasmgate_messages_out_total`); `write_timeout` is
    /// `write_ms`.
    pub(crate) fn new(transport: T, queue: OutboundReceiver, sent: Counter, write_timeout: Duration) -> Self {
        Self {
            transport,
            queue,
            sent,
            write_timeout_ms: u32::try_from(write_timeout.as_millis()).unwrap_or(u32::MAX),
            write_timer: None,
            closed: false,
            done: false,
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.write_timeout_ms))
    }

    /// Ready once the write deadline passed ([`Event::WriteBlocked`] set it; the socket has not
    /// taken everything since). Pending while the socket takes what it is given.
    pub(crate) fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.write_timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Moves output along (queue -> buffer -> socket) as far as it can go, then, if `read`,
    /// polls for the next inbound message. Ready with what the session must act on.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Event> {
        while !self.done {
            if self.transport.buffered() > 0 {
                match self.transport.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => self.write_timer = None,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("write failed: {e}");
                        self.done = true;
                        self.queue.session().abort(CloseReason::TransportError, "write failed");
                        return Poll::Ready(Event::WriteFailed);
                    }
                    Poll::Pending if self.write_timer.is_none() => {
                        self.write_timer = Some(Box::pin(sleep(self.write_timeout())));
                        return Poll::Ready(Event::WriteBlocked);
                    }
                    Poll::Pending => {}
                }
            }
            if self.closed {
                if self.transport.buffered() == 0 {
                    self.done = true;
                    return Poll::Ready(Event::CloseWritten);
                }
                break;
            }
            // While the socket pushes back, packets wait in the queue, under its bounds.
            if self.transport.buffered() >= WRITE_BUFFER || !self.take(cx) {
                break;
            }
        }
        if read { self.transport.poll_next(cx).map(Event::Inbound) } else { Poll::Pending }
    }

    /// Moves queued packets into the transport's buffer, up to [`WRITE_BUFFER`] bytes or the
    /// close: false if the queue had nothing (a control frame alone counts: a pong must go out).
    fn take(&mut self, cx: &mut Context<'_>) -> bool {
        let (mut taken, mut count) = (false, 0);
        while self.transport.buffered() < WRITE_BUFFER && !self.closed {
            let Poll::Ready(item) = self.queue.poll_recv(cx) else { break };
            taken = true;
            let put = match item {
                Outbound::Packet { msg_id, seq, body } => self.transport.put(msg_id, seq, &body).map(|()| 1),
                Outbound::Shared(packet) => self.transport.put_shared(&packet).map(|()| 1),
                // Not a message: not counted in `messages_out`.
                Outbound::Control(frame) => {
                    self.transport.put_control(&frame);
                    Ok(0)
                }
                Outbound::Close => {
                    self.closed = true;
                    let (reason, message) =
                        self.queue.session().close_reason().unwrap_or((CloseReason::Normal, ""));
                    self.transport.put_close(reason, message);
                    Ok(0)
                }
            };
            match put {
                Ok(n) => count += n,
                // A packet too long for the transport's framing: the client cannot be told.
                Err(e) => tracing::warn!("outbound packet dropped: {e}"),
            }
        }
        if count > 0 {
            self.sent.inc_by(count);
        }
        taken
    }

    /// Runs `work` (a message's handling: scripts, upstream sends) while the output keeps
    /// moving, so a slow script call does not hold back what others send this session.
    pub(crate) async fn alongside<F: Future<Output = ()>>(&mut self, work: F) {
        let mut work = pin!(work);
        loop {
            tokio::select! {
                biased;
                () = &mut work => return,
                // Failures abort the session themselves; the deadline is judged after `work`.
                _ = poll_fn(|cx| self.poll_event(cx, false)) => {}
            }
        }
    }

    /// After the session stopped reading: writes what was queued up to its close, and the
    /// close, within `write_ms` (+1 s), then waits up to [`CLOSE_LINGER`] for the client to end
    /// its side; an abort (slow consumer, shutdown deadline) sends only the close notice,
    /// within [`ABORT_NOTICE_GRACE`].
    pub(crate) async fn finish(&mut self) {
        let handle = self.queue.session().clone();
        let limit = self.write_timeout() + Duration::from_secs(1);
        let graceful = async {
            while !self.done {
                if let Event::WriteFailed = poll_fn(|cx| self.poll_event(cx, false)).await {
                    return;
                }
            }
            if self.closed {
                let _ = poll_fn(|cx| self.transport.poll_shutdown(cx)).await;
            }
        };
        let finished = tokio::select! {
            biased;
            _ = handle.aborted() => false,
            result = timeout(limit, graceful) => result.is_ok(),
        };
        if !finished {
            handle.abort(CloseReason::SlowConsumer, "close did not complete");
            self.abort_notice().await;
        } else if self.closed {
            let _ = timeout(CLOSE_LINGER, poll_fn(|cx| self.transport.poll_drain(cx))).await;
        }
    }

    /// Tells an aborted session's client why, if its socket takes it within
    /// [`ABORT_NOTICE_GRACE`]: the error frame, then (WebSocket) the close frame, after what
    /// was buffered already (whole frames, so the stream stays in step). The queue is dropped.
    async fn abort_notice(&mut self) {
        if self.done {
            return;
        }
        let (reason, message) = self.queue.session().close_reason().unwrap_or((CloseReason::GoingAway, ""));
        if !self.closed {
            if let Some((msg_id, body)) = self.queue.session().close_notice() {
                let _ = self.transport.put(msg_id, 0, &body);
            }
            self.transport.put_close(reason, message);
            self.closed = true;
        }
        let notice = async {
            poll_fn(|cx| self.transport.poll_write_out(cx)).await?;
            poll_fn(|cx| self.transport.poll_shutdown(cx)).await
        };
        let _ = timeout(ABORT_NOTICE_GRACE, notice).await;
        self.done = true;
    }
}
