//! The shareable handle of a live session: its identity and its bounded outbound queue.
//!
//! Slow-consumer policy (docs/protocol.md): a session's outbound queue holds
//! `pending_write_num` packets and `pending_write_bytes` bytes of them. A sender never waits
//! for a client: when a packet does not fit the session is closed at once with 4005
//! `slow_consumer` (counted in
//! `wasmgate_sessions_closed_total{reason="slow_consumer"}`), so one stalled client never
//! delays a backend connection, a fan-out or another session.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::queue::{PushError, Queue};
use super::{CloseReason, ErrorCode};
use crate::protocol::client::SharedPacket;

/// Something to write to a session's client.
#[derive(Debug)]
pub enum Outbound {
    /// A packet to the client.
    Packet { msg_id: u32, seq: u32, body: Bytes },
    /// A fan-out packet, encoded once for all its recipients.
    Shared(Arc<SharedPacket>),
    /// Transport control bytes written as they are (a WebSocket pong or close reply,
    /// RFC 6455 section 5.5), in order with the packets around them.
    Control(Bytes),
    /// Close after everything queued before it (reason in the handle).
    Close,
}

impl Outbound {
    /// What the item counts against `pending_write_bytes`: the packet's binary size.
    pub fn size(&self) -> usize {
        match self {
            Self::Packet { body, .. } => body.len() + crate::protocol::client::HEADER_LEN,
            Self::Shared(packet) => packet.body.len() + crate::protocol::client::HEADER_LEN,
            Self::Control(frame) => frame.len(),
            Self::Close => 0,
        }
    }
}

/// Transport of a session, as a metrics label and for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSocket,
    Tcp,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Tcp => "tcp",
        }
    }
}

struct Shared {
    id: u64,
    transport: TransportKind,
    peer: SocketAddr,
    error_msg_id: u32,
    user_id: OnceLock<Arc<str>>,
    /// Logged in, or an anonymous go-push session: receives pushes to everyone.
    admitted: AtomicBool,
    /// The duplicate-login rule to reconcile under ([`DuplicateRule`] as u8; see
    /// [`SessionHandle::duplicate_rule`]).
    duplicate_rule: AtomicU8,
    /// Ticks of the deadline wheel ([`super::deadlines`]): when the session was registered,
    /// and when its client last sent something.
    born: AtomicU32,
    seen: AtomicU32,
    /// The outbound queue, of at most `pending_write_num` packets and `pending_write_bytes`
    /// bytes (header and body).
    queue: Queue,
    /// Why it closed (a boxed str: 8 bytes fewer in every session than a `String`).
    close_reason: OnceLock<(CloseReason, Box<str>)>,
    /// How far the close has gone: reading stops at `CLOSING`, writing (without
    /// flushing) at `ABORTED`.
    close: CloseSignal,
    /// Rooms this session is in (kept by [`crate::rooms::Rooms`]).
    rooms: Mutex<Memberships>,
}

/// A session's close stages, raised once each and never lowered, with a wake-up for the
/// session waiting on them. Inline in the handle: the two cancellation tokens it
/// replaces cost 256 bytes of tree nodes per session (docs/benchmarks.md#idle-sessions).
#[derive(Default)]
struct CloseSignal {
    stage: AtomicU8,
    changed: Notify,
}

/// The session starts closing: reading stops, what is queued is written.
const CLOSING: u8 = 1;
/// Writing stops without flushing (implies `CLOSING`).
const ABORTED: u8 = 2;

impl CloseSignal {
    fn raise(&self, stage: u8) {
        if self.stage.fetch_max(stage, Ordering::AcqRel) < stage {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the stage is at least `stage`.
    async fn reached(&self, stage: u8) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a raise between the two is not missed.
            notified.as_mut().enable();
            if self.stage.load(Ordering::Acquire) >= stage {
                return;
            }
            notified.await;
        }
    }
}

/// The rooms of one session. `closed` is set when the session leaves them all for good, so a
/// join racing with the close cannot leave a dead member behind.
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    pub rooms: Vec<Arc<str>>,
    pub closed: bool,
}

/// Cheap to clone; the registry and backend dispatch hold these.
#[derive(Clone)]
pub struct SessionHandle(Arc<Shared>);

/// A duplicate-login rule (the auth script's `on-duplicate`), as kept per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DuplicateRule {
    Allow = 0,
    /// The newest session of a user stays.
    KickOlder = 1,
    /// The oldest session of a user stays.
    RefuseNew = 2,
}

/// Body of an error frame: `{"code": "...", "message": "..."}`.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "code": code, "message": message }).to_string())
}

impl SessionHandle {
    /// A handle and the receiving end of its outbound queue (`capacity` packets of at most
    /// `max_bytes` together).
    pub fn new(
        id: u64,
        transport: TransportKind,
        peer: SocketAddr,
        error_msg_id: u32,
        (capacity, max_bytes): (usize, usize),
    ) -> (Self, OutboundReceiver) {
        let shared = Shared {
            id,
            transport,
            peer,
            error_msg_id,
            user_id: OnceLock::new(),
            admitted: AtomicBool::new(false),
            duplicate_rule: AtomicU8::new(DuplicateRule::Allow as u8),
            born: AtomicU32::new(0),
            seen: AtomicU32::new(0),
            queue: Queue::new(capacity, max_bytes),
            close_reason: OnceLock::new(),
            close: CloseSignal::default(),
            rooms: Mutex::default(),
        };
        let handle = Self(Arc::new(shared));
        (handle.clone(), OutboundReceiver(handle))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn transport(&self) -> TransportKind {
        self.0.transport
    }

    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// The logged-in user, if any.
    pub fn user_id(&self) -> Option<&Arc<str>> {
        self.0.user_id.get()
    }

    /// Records the login. Returns false if the session was already logged in.
    pub(crate) fn set_user(&self, user_id: Arc<str>) -> bool {
        let first = self.0.user_id.set(user_id).is_ok();
        self.admit();
        first
    }

    /// Marks the session as one that receives pushes to everyone (done at login).
    pub(crate) fn admit(&self) {
        self.0.admitted.store(true, Ordering::Relaxed);
    }

    /// Sets both clocks of the deadline wheel to `tick` (at registration).
    pub(crate) fn start_clock(&self, tick: u32) {
        self.0.born.store(tick, Ordering::Relaxed);
        self.0.seen.store(tick, Ordering::Relaxed);
    }

    /// The client sent something at wheel tick `tick`: the heartbeat deadline moves.
    pub(crate) fn seen(&self, tick: u32) {
        self.0.seen.store(tick, Ordering::Relaxed);
    }

    /// Wheel ticks: (registered, last sent something).
    pub(crate) fn clock(&self) -> (u32, u32) {
        (self.0.born.load(Ordering::Relaxed), self.0.seen.load(Ordering::Relaxed))
    }

    /// Records the duplicate-login rule of the session's login.
    pub(crate) fn set_duplicate_rule(&self, rule: DuplicateRule) {
        self.0.duplicate_rule.store(rule as u8, Ordering::Relaxed);
    }

    /// The duplicate-login rule to reconcile this session under, set only for a session
    /// admitted without its cluster-wide check (Redis did not answer); `Allow` otherwise: the
    /// cluster reconciles such sessions when two of one user turn out live after a partition.
    pub fn duplicate_rule(&self) -> DuplicateRule {
        match self.0.duplicate_rule.load(Ordering::Relaxed) {
            1 => DuplicateRule::KickOlder,
            2 => DuplicateRule::RefuseNew,
            _ => DuplicateRule::Allow,
        }
    }

    /// Logged in (or an anonymous go-push session): pushes to everyone reach it.
    pub fn is_admitted(&self) -> bool {
        self.0.admitted.load(Ordering::Relaxed)
    }

    /// Queues a packet. Returns false if the session is closing or was just closed as a slow
    /// consumer because its queue is full (in packets or in bytes).
    pub fn send(&self, msg_id: u32, seq: u32, body: Bytes) -> bool {
        self.queue_bounded(Outbound::Packet { msg_id, seq, body })
    }

    /// Queues a fan-out packet, under the same slow-consumer policy as [`Self::send`].
    pub fn send_shared(&self, packet: Arc<SharedPacket>) -> bool {
        self.queue_bounded(Outbound::Shared(packet))
    }

    /// Queues transport control bytes (a WebSocket pong or close reply), under the same
    /// slow-consumer policy: a client that sends pings and never reads is closed with 4005.
    pub fn send_control(&self, frame: Bytes) -> bool {
        self.queue_bounded(Outbound::Control(frame))
    }

    fn queue_bounded(&self, item: Outbound) -> bool {
        match self.0.queue.push(item, true) {
            Ok(()) => true,
            Err(PushError::OverBytes) => {
                self.abort(CloseReason::SlowConsumer, "outbound queue over pending_write_bytes");
                false
            }
            Err(PushError::Full) => {
                self.abort(CloseReason::SlowConsumer, "outbound queue full");
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Queues `item` whatever the byte bound says (the close's error frame and marker); false
    /// if the queue is full or gone.
    fn queue(&self, item: Outbound) -> bool {
        self.0.queue.push(item, false).is_ok()
    }

    /// Bytes of the packets queued now.
    pub fn queued_bytes(&self) -> usize {
        self.0.queue.bytes()
    }

    /// The session's room memberships (locked briefly by the room table only).
    pub(crate) fn memberships(&self) -> &Mutex<Memberships> {
        &self.0.rooms
    }

    /// Queues an error frame (`code`, human-readable `message`) answering the packet `seq`.
    /// Callers count it ([`crate::metrics::Metrics::client_error`]).
    pub fn send_error(&self, seq: u32, code: ErrorCode, message: &str) -> bool {
        self.send(self.0.error_msg_id, seq, error_body(code.name(), message))
    }

    /// Sends an `upstream_error` frame answering packet `seq`, with the backend's `result`
    /// (a Thrift `ProtoReply.result`) when there is one: `{"code": "upstream_error",
    /// "message": .., "result": -3}`.
    pub fn send_upstream_error(&self, seq: u32, message: &str, result: Option<i64>) -> bool {
        let mut body = serde_json::json!({ "code": ErrorCode::UpstreamError.name(), "message": message });
        if let Some(result) = result {
            body["result"] = result.into();
        }
        self.send(self.0.error_msg_id, seq, Bytes::from(body.to_string()))
    }

    /// Closes gracefully: what is queued is written first, then (if the reason is announced)
    /// an error frame with `code`/`message` answering packet `seq` (0: none), then the close.
    /// Only the first close counts.
    pub fn close_with_error(&self, reason: CloseReason, seq: u32, code: ErrorCode, message: &str) {
        self.close_announcing(reason, seq, code.name(), message);
    }

    fn close_announcing(&self, reason: CloseReason, seq: u32, code: &str, message: &str) {
        if self.0.close_reason.set((reason, message.into())).is_err() {
            return;
        }
        if reason.announce() {
            let error =
                Outbound::Packet { msg_id: self.0.error_msg_id, seq, body: error_body(code, message) };
            if !self.queue(error) {
                self.0.close.raise(ABORTED);
            }
        }
        if !self.queue(Outbound::Close) {
            self.0.close.raise(ABORTED);
        }
        self.0.close.raise(CLOSING);
        self.0.queue.wake();
    }

    /// [`Self::close_with_error`] with the reason's own name as the error code.
    pub fn close(&self, reason: CloseReason, message: &str) {
        self.close_announcing(reason, 0, reason.name(), message);
    }

    /// Closes now, dropping whatever is queued (slow consumer, shutdown deadline).
    pub fn abort(&self, reason: CloseReason, message: &str) {
        let _ = self.0.close_reason.set((reason, message.into()));
        self.0.close.raise(ABORTED);
        self.0.queue.wake();
    }

    /// The error frame (message id, body) announcing the close reason, if it is one that is
    /// announced: what an aborted session's writer sends in place of the dropped queue.
    pub fn close_notice(&self) -> Option<(u32, Bytes)> {
        let (reason, message) = self.close_reason()?;
        reason.announce().then(|| (self.0.error_msg_id, error_body(reason.name(), message)))
    }

    /// Why the session is closing (`None` while it is open).
    pub fn close_reason(&self) -> Option<(CloseReason, &str)> {
        self.0.close_reason.get().map(|(r, m)| (*r, &**m))
    }

    /// Resolves when the session starts closing (or is aborted).
    pub fn closing(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.close.reached(CLOSING)
    }

    /// Whether the session is closing (ready when [`Self::closing`] would be), registering
    /// the task polling its queue to be woken when it starts to: the session's own read loop
    /// waits on its queue and its close with one waker, not a future per wait.
    pub(crate) fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: a close raised between the two still wakes the task.
        self.0.queue.register(cx);
        match self.0.close.stage.load(Ordering::Acquire) >= CLOSING {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// Resolves when the writer must stop without flushing.
    pub fn aborted(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.close.reached(ABORTED)
    }
}

/// The receiving end of a session's outbound queue, held by the session's task. Dropping it
/// closes the queue: what waits is dropped, and later sends (and closes) fail, so a close
/// after the task ended is an abort.
pub struct OutboundReceiver(SessionHandle);

impl OutboundReceiver {
    /// The session whose queue this is.
    pub fn session(&self) -> &SessionHandle {
        &self.0
    }

    /// The next item, or `Pending` until one is queued.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        self.0.0.queue.poll_pop(cx)
    }

    /// The next item, if one waits.
    pub fn try_recv(&self) -> Option<Outbound> {
        self.0.0.queue.try_pop()
    }

    /// Waits for the next item.
    pub async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.0.0.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A handle and its queue's receiver (a dropped receiver makes every close an abort).
    fn handle() -> (SessionHandle, OutboundReceiver) {
        SessionHandle::new(1, TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), 4, (4, usize::MAX))
    }

    /// True if `future` resolves within 100 ms.
    async fn resolves(future: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), future).await.is_ok()
    }

    /// An idle session's handle is one allocation of this size, queue included (flume's
    /// channel beside it took ~350 bytes more: docs/benchmarks.md, "A queue inside the handle").
    #[test]
    fn the_handle_with_its_queue_stays_small() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 280, "the handle's shared state is {size} bytes (288 with a `String` close reason)");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let new =
            |id| SessionHandle::new(id, TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), 4, (256, 1000));
        let (h, _rx) = new(1);
        let body = Bytes::from(vec![0u8; 392]); // 400 bytes with the header
        assert!(h.send(9, 0, body.clone()) && h.send(9, 0, body.clone()));
        assert_eq!(h.queued_bytes(), 800);
        assert!(!h.send(9, 0, body), "a third would make 1200 bytes");
        let (reason, message) = h.close_reason().expect("closed");
        assert_eq!(reason, CloseReason::SlowConsumer);
        assert!(message.contains("pending_write_bytes"), "{message}");
        // An empty queue takes any one packet; the writer's dequeue gives its bytes back.
        let (big, rx) = new(2);
        assert!(big.send(9, 0, Bytes::from(vec![0u8; 5000])), "one large packet into an empty queue");
        assert_eq!(big.queued_bytes(), 5000 + crate::protocol::client::HEADER_LEN);
        assert!(rx.try_recv().is_some());
        assert_eq!(big.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_close_stops_the_reader_and_lets_the_writer_flush() {
        let (h, _rx) = handle();
        let (waiter, closer) = (h.clone(), h.clone());
        // A waiter registered before the close is woken by it.
        let reader = tokio::spawn(async move { waiter.closing().await });
        tokio::task::yield_now().await;
        closer.close(CloseReason::Normal, "bye");
        assert!(resolves(async { reader.await.unwrap() }).await);
        assert!(resolves(h.closing()).await, "a late waiter sees the close at once");
        assert!(!resolves(h.aborted()).await, "a graceful close does not abort the writer");
    }

    #[tokio::test]
    async fn an_abort_stops_both() {
        let (h, _rx) = handle();
        assert!(!resolves(h.closing()).await, "open: nothing resolves");
        h.abort(CloseReason::SlowConsumer, "queue full");
        assert!(resolves(h.aborted()).await);
        assert!(resolves(h.closing()).await, "an abort implies closing");
        assert_eq!(h.close_reason().map(|(r, _)| r), Some(CloseReason::SlowConsumer));
    }
}
