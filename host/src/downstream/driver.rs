//! The life of one connection, independent of its transport.
//!
//! One task per session: it reads and decodes, runs timers, local routes, scripts and
//! upstream sends in order, and writes the outbound queue as the socket takes it
//! ([`SessionIo`]). Phases, after the transport's handshake:
//!
//! 1. registered in the [`Registry`](crate::session::Registry); login timer armed (`login_ms`);
//! 2. login route -> auth script -> user bound, login timer disarmed;
//! 3. each packet resets the heartbeat timer (`heartbeat_ms`); local routes (heartbeat, close)
//!    are answered here, anything else goes to the router script and then upstream;
//! 4. any close (client, timer, script, backend kick, slow consumer, shutdown) -> what is
//!    queued is written, the client gets the error frame and close code, the session is
//!    unregistered.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::SessionCtx;
use super::abuse::{SessionLimits, Verdict};
use super::session_io::{Event, Inbound, SessionIo, Transport};
use crate::metrics::{Metrics, ReasonLabel};
use crate::protocol::backend::BackendFrame;
use crate::protocol::client::{HEADER_LEN, Packet};
use crate::script::bindings::{self, Decision, HandlerError, Outcome, Reply, RouteError};
use crate::session::{CloseReason, ErrorCode, SessionHandle, TransportKind};

/// A session over an established `connection` (WebSocket after the upgrade, TCP after
/// accept), registered at once; the future runs it to its end. `token`, if any, logs the
/// session in before its first packet (WebSocket `?token=`).
///
/// Everything the session keeps is built here and moved into one future: each layer of async
/// fns would store its arguments again, in every idle session (docs/architecture.md).
pub(crate) fn run(
    ctx: Arc<SessionCtx>,
    transport: TransportKind,
    peer: std::net::SocketAddr,
    token: Option<String>,
    connection: impl Transport,
) -> impl std::future::Future<Output = ()> + Send {
    let config = &ctx.config;
    let id = ctx.ids.next_id();
    let queue = (config.limits.pending_write_num, config.limits.pending_write_bytes);
    let (handle, rx) = SessionHandle::new(id, transport, peer, config.routes.error, queue);
    let label = transport.name();
    let metrics = &ctx.metrics;
    Metrics::transport_counter(&metrics.connections_total, label).inc();
    metrics.connections.get_or_create(&crate::metrics::TransportLabel { transport: label }).inc();
    ctx.registry.insert(handle.clone());
    ctx.deadlines.arm(&handle);
    // A shutdown closes the sessions it finds in the registry; one registered after that
    // sees the token here (checked after the insert, so none slips between the two).
    if ctx.shutdown.is_cancelled() {
        handle.close(CloseReason::GoingAway, "server shutting down");
    }
    let write_timeout = Duration::from_millis(config.timeouts.write_ms);
    let out_counter = Metrics::transport_counter(&metrics.messages_out, label);
    let io = SessionIo::new(connection, rx, out_counter, write_timeout);
    // OpenTelemetry semantic-convention names where they exist (session.id, client.*,
    // network.protocol.name; the login span has enduser.id); exported only when span export
    // is on.
    let span = tracing::debug_span!(
        "session",
        session.id = id,
        client.address = %peer.ip(),
        client.port = peer.port(),
        network.protocol.name = label,
        wasmgate.close_reason = tracing::field::Empty,
    );
    let session = serve(Session::new(ctx, handle), io, token.map(String::into_boxed_str));
    // A span kept beside the future is 40 bytes of every session even when nothing is
    // interested in it (span export off): the session runs in its span only when it is built.
    if span.is_disabled() { Either::Left(session) } else { Either::Right(Box::pin(session.instrument(span))) }
}

/// The session after its registration: login, packets, close, and the bookkeeping after it.
///
/// A plain fn returning an `async move` block, not an `async fn`: an async fn keeps its
/// arguments twice in its future (as they were passed, and moved into the body's locals),
/// which for a session was its transport, queue and record twice, ~400 bytes of every idle
/// session; the block keeps what it captures once.
#[allow(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
fn serve(
    mut session: Session,
    mut io: SessionIo<impl Transport>,
    token: Option<Box<str>>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        tracing::debug!("session open");
        io.transport.attach(&session.handle);
        if let Some(token) = token {
            io.alongside(Box::pin(session.login(0, &token, false))).await;
        }
        session.read_loop(&mut io).await;
        // The rooms are left while the queue up to the close is written.
        tokio::join!(Box::pin(session.leave_rooms_on_close()), Box::pin(io.finish()));
        drop(io);
        // Boxed: the idle future keeps nothing for what comes after the close.
        Box::pin(session.closed()).await;
    }
}

impl Session {
    /// The bookkeeping after the close: unregistered, the user's location and the user
    /// centre told, the auth script's `account-lost`, the gauges and counters.
    async fn closed(&self) {
        let (ctx, handle) = (&self.ctx, &self.handle);
        ctx.registry.remove(handle);
        let reason = handle.close_reason().map_or(CloseReason::Normal, |(r, _)| r);
        if let Some(user) = handle.user_id() {
            if let Some(bus) = ctx.bus() {
                bus.closed(user.clone(), handle.id());
            }
            if let Some(user_centre) = &ctx.user_centre {
                user_centre.logout(user, handle.id(), handle.peer());
            }
            if let Err(e) = ctx.scripts.auth.account_lost(&self.info(), reason.name()).await {
                tracing::warn!("auth script's account-lost failed: {e}");
            }
        }
        let transport = crate::metrics::TransportLabel { transport: handle.transport().name() };
        ctx.metrics.connections.get_or_create(&transport).dec();
        ctx.metrics.sessions_closed.get_or_create(&ReasonLabel { reason: reason.name() }).inc();
        tracing::Span::current().record("wasmgate.close_reason", reason.name());
        tracing::debug!(reason = reason.name(), "session closed");
    }
}

/// What woke the read loop.
enum Wake {
    /// The session started to close.
    Closing,
    /// The connection, or the output moving.
    Event(Event),
    /// The write deadline passed: the socket did not take what was buffered in time.
    WriteTimedOut,
}

/// What an inbound message asks of the read loop.
enum Step<'a> {
    /// Nothing more (answered or refused already).
    Next,
    /// Handling that awaits (scripts, upstream sends), run while the output keeps moving.
    Work(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>),
    /// The session is over.
    End,
}

pub(super) struct Session {
    pub(super) ctx: Arc<SessionCtx>,
    pub(super) handle: SessionHandle,
    messages_in: prometheus_client::metrics::counter::Counter,
    /// `[rate_limits]`' message and byte buckets; `None` when both are off.
    limits: Option<Box<SessionLimits>>,
}

impl Session {
    fn new(ctx: Arc<SessionCtx>, handle: SessionHandle) -> Self {
        let messages_in = Metrics::transport_counter(&ctx.metrics.messages_in, handle.transport().name());
        let limits = ctx.peers.session_limits();
        Self { ctx, handle, messages_in, limits }
    }

    /// What scripts are told about this session, built for each call from the handle rather
    /// than kept: kept, its record and two strings were ~130 bytes of every idle session; built,
    /// they cost two small allocations and the peer's digits per call (docs/benchmarks.md,
    /// "Idle TCP under 1.5 KiB").
    pub(super) fn info(&self) -> bindings::Session {
        let handle = &self.handle;
        bindings::Session {
            id: handle.id(),
            node_id: self.ctx.config.node.id,
            transport: match handle.transport() {
                TransportKind::WebSocket => bindings::Transport::Websocket,
                TransportKind::Tcp => bindings::Transport::Tcp,
            },
            peer_addr: peer_text(handle.peer()),
            user_id: handle.user_id().map(|user| user.to_string()),
        }
    }

    /// Whether the session is logged in (its user is bound).
    pub(super) fn logged_in(&self) -> bool {
        self.handle.user_id().is_some()
    }

    /// Answers packet `seq` with an error frame `code` (counted by code and blame).
    pub(super) fn reject(&self, seq: u32, code: ErrorCode, message: &str) {
        self.ctx.metrics.client_error(code);
        self.handle.send_error(seq, code, message);
    }

    /// Answers packet `seq` with an error frame `code` (counted), then closes for `reason`.
    pub(super) fn reject_and_close(&self, reason: CloseReason, seq: u32, code: ErrorCode, message: &str) {
        self.ctx.metrics.client_error(code);
        self.handle.close_with_error(reason, seq, code, message);
    }

    async fn read_loop(&mut self, io: &mut SessionIo<impl Transport>) {
        // The login and heartbeat deadlines are on the gateway's wheel (session::deadlines),
        // which closes the session; the write deadline has a timer only while the socket
        // pushes back (in `io`).
        loop {
            // The close, then the connection, then the write deadline; one waker for all (the
            // close signal wakes the task parked on the queue), no future per wait.
            let handle = &self.handle;
            let event = poll_fn(|cx| {
                if handle.poll_closing(cx).is_ready() {
                    return Poll::Ready(Wake::Closing);
                }
                match io.poll_event(cx, true) {
                    Poll::Ready(event) => Poll::Ready(Wake::Event(event)),
                    Poll::Pending => io.poll_write_deadline(cx).map(|()| Wake::WriteTimedOut),
                }
            })
            .await;
            match event {
                Wake::Closing => return,
                Wake::WriteTimedOut => {
                    self.handle.abort(CloseReason::SlowConsumer, "write timed out");
                    return;
                }
                Wake::Event(Event::Inbound(inbound)) => match self.on_inbound(inbound) {
                    Step::Next => {}
                    Step::Work(work) => io.alongside(work).await,
                    Step::End => return,
                },
                // The write deadline is set: polled above from now on.
                Wake::Event(Event::WriteBlocked) => {}
                // The close went out before the read loop saw it: the close signal is next.
                Wake::Event(Event::CloseWritten) => {}
                Wake::Event(Event::WriteFailed) => return,
            }
        }
    }

    /// What the client sent: the work it needs (boxed, and built here rather than in an
    /// async fn, so the idle session's future holds neither the message path's state nor its
    /// arguments), or the end of the session.
    fn on_inbound(&mut self, inbound: Inbound) -> Step<'_> {
        match inbound {
            Inbound::Packet(packet) => {
                self.handle.seen(self.ctx.deadlines.tick_of(Instant::now()));
                self.messages_in.inc();
                if !self.within_limits(packet.seq, packet.body.len() + HEADER_LEN) {
                    return Step::Next;
                }
                let span = tracing::debug_span!(
                    "message",
                    wasmgate.msg_id = packet.msg_id,
                    wasmgate.seq = packet.seq,
                    messaging.message.body.size = packet.body.len(),
                );
                Step::Work(Box::pin(self.on_packet(packet).instrument(span)))
            }
            Inbound::GoPush(request) => {
                self.handle.seen(self.ctx.deadlines.tick_of(Instant::now()));
                self.messages_in.inc();
                if !self.within_limits(0, 0) {
                    return Step::Next;
                }
                Step::Work(Box::pin(self.on_gopush(request)))
            }
            Inbound::Closed => {
                self.handle.close(CloseReason::Normal, "client closed");
                Step::End
            }
            Inbound::Failed(reason, message) => {
                self.handle.close(reason, &message);
                Step::End
            }
        }
    }

    /// Takes a packet of `size` bytes from the session's rate limits: `false` when they
    /// refuse it (answered `rate_limited`, or the session is closed with 4007).
    fn within_limits(&self, seq: u32, size: usize) -> bool {
        let Some(limits) = &self.limits else { return true };
        match limits.check(size) {
            Verdict::Pass => true,
            Verdict::Refuse(limit) => {
                self.ctx.metrics.limited(limit);
                self.reject(seq, ErrorCode::RateLimited, "too many messages: slow down");
                false
            }
            Verdict::Close(limit) => {
                self.ctx.metrics.limited(limit);
                self.handle.close(CloseReason::RateLimited, "kept sending over the rate limit");
                false
            }
        }
    }

    async fn on_packet(&mut self, packet: Packet) {
        let routes = &self.ctx.config.routes;
        let seq = packet.seq;
        let id = packet.msg_id;
        if id == routes.heartbeat {
            self.heartbeat(seq);
        } else if id == routes.login {
            self.login(seq, &token_of(&packet.body), true).await;
        } else if id == routes.close {
            self.handle.close(CloseReason::Normal, "client asked to close");
        } else if id == routes.error || id == routes.push {
            self.reject(seq, ErrorCode::BadRequest, "this id is server-to-client only");
        } else if !self.logged_in() {
            self.reject(seq, ErrorCode::NotLoggedIn, "log in before sending other messages");
        } else if id == routes.join {
            self.join_request(seq, &packet.body).await;
        } else if id == routes.leave {
            self.leave_request(seq, &packet.body).await;
        } else if id == routes.room_message {
            self.room_message(packet).await;
        } else if id == routes.room_list {
            self.room_list(seq, &packet.body);
        } else {
            self.route(packet).await;
        }
    }

    fn heartbeat(&self, seq: u32) {
        let body = serde_json::json!({ "server_time_ms": unix_ms() }).to_string();
        self.handle.send(self.ctx.config.routes.heartbeat, seq, Bytes::from(body));
    }

    /// go-push's PING, JOIN and LEAVE. Without a login they are refused unless
    /// `rooms.gopush_anonymous` admits the session as go-push does.
    async fn on_gopush(&mut self, request: crate::protocol::gopush::Request) {
        use crate::protocol::gopush::Request;
        if request == Request::Ping {
            return self.heartbeat(0);
        }
        if !self.logged_in() {
            if !self.ctx.config.rooms.gopush_anonymous {
                self.reject(0, ErrorCode::NotLoggedIn, "log in first (WebSocket URL `?token=`)");
                return;
            }
            self.handle.admit();
        }
        match request {
            Request::Join { room } => self.join(0, room, Bytes::new()).await,
            Request::Leave { room } => self.leave(0, &room).await,
            Request::Ping => {}
        }
    }

    async fn route(&mut self, packet: Packet) {
        let seq = packet.seq;
        if self.ctx.config.scripts.native_router
            && self.ctx.scripts.handlers.for_message(packet.msg_id).is_none()
        {
            let decision = self.ctx.scripts.router.route_native(packet.msg_id);
            return self.apply_decision(decision, packet).await;
        }
        let record = bindings::Packet { msg_id: packet.msg_id, seq, body: packet.body.to_vec() };
        if let Some(handler) = self.ctx.scripts.handlers.for_message(packet.msg_id) {
            // message_map sends this id to a handler script; a failing one answers
            // `script_error` (no fallback dest: the map chose the script over a dest).
            let decision = match handler.handle(&self.info(), &record, packet.es_id).await {
                Ok(outcome) => decision_of(outcome),
                Err(e) => {
                    tracing::debug!("handler script failed: {e}");
                    self.reject(seq, ErrorCode::ScriptError, "the handler script failed on this message");
                    return;
                }
            };
            return self.apply_decision(decision, packet).await;
        }
        let decision = match self.ctx.scripts.router.route(&self.info(), &record, packet.es_id).await {
            Ok(decision) => decision,
            // Failure policy: the configured fallback dest, else an error reply.
            Err(e) => match self.ctx.config.scripts.router_fallback_dest {
                Some(dest) => {
                    tracing::debug!(dest, "router failed, forwarding to the fallback dest: {e}");
                    Decision::Forward(dest)
                }
                None => {
                    tracing::debug!("router failed: {e}");
                    self.reject(seq, ErrorCode::ScriptError, "the router failed on this message");
                    return;
                }
            },
        };
        self.apply_decision(decision, packet).await;
    }

    /// Carries out a router's or handler's decision on `packet`.
    async fn apply_decision(&mut self, decision: Decision, packet: Packet) {
        let seq = packet.seq;
        match decision {
            Decision::Forward(dest) => {
                let frame = BackendFrame::Forward {
                    session_id: self.handle.id(),
                    node_id: self.ctx.config.node.id,
                    msg_id: packet.msg_id,
                    seq,
                    user_id: self.handle.user_id().map(|user| user.to_string()).unwrap_or_default(),
                    body: packet.body,
                };
                if let Err(e) = self.ctx.upstreams.forward(dest, self.handle.id(), frame).await {
                    self.reject(seq, e.code(), &e.to_string());
                }
            }
            Decision::Reply(reply) => {
                self.handle.send(reply.msg_id, seq, Bytes::from(reply.body));
            }
            Decision::Drop => {
                self.ctx.metrics.script_drops.inc();
            }
            Decision::Close(reason) => {
                let reason: String = reason.chars().take(120).collect();
                self.handle.close(CloseReason::ScriptClose, &reason);
            }
            Decision::Reject(error) => {
                let (code, message) = match &error {
                    RouteError::UnknownMessage => (ErrorCode::UnknownMessage, "no route for this message id"),
                    RouteError::BadRequest(m) => (ErrorCode::BadRequest, m.as_str()),
                    RouteError::Forbidden(m) => (ErrorCode::Forbidden, m.as_str()),
                };
                self.reject(seq, code, message);
            }
        }
    }
}

/// A handler script's outcome as the router's decision (the same cases, minus
/// `unknown-message`).
fn decision_of(outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Forward(dest) => Decision::Forward(dest),
        Outcome::Reply(answer) => Decision::Reply(Reply { msg_id: answer.msg_id, body: answer.body }),
        Outcome::Drop => Decision::Drop,
        Outcome::Close(reason) => Decision::Close(reason),
        Outcome::Reject(HandlerError::BadRequest(m)) => Decision::Reject(RouteError::BadRequest(m)),
        Outcome::Reject(HandlerError::Forbidden(m)) => Decision::Reject(RouteError::Forbidden(m)),
    }
}

/// The login token: the body as UTF-8, or the `token` field of a JSON object body.
fn token_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Login {
        token: String,
    }
    if body.first() == Some(&b'{')
        && let Ok(login) = serde_json::from_slice::<Login>(body)
    {
        return login.token;
    }
    String::from_utf8_lossy(body).trim().to_string()
}

/// `addr` as scripts see it, as `SocketAddr`'s `Display` writes it (`a.b.c.d:port`,
/// `[v6]:port`). IPv4 is written digit by digit (`itoa`): std's `Display` goes through the
/// formatter's padding support, about twice the time of a script call's record otherwise.
fn peer_text(addr: std::net::SocketAddr) -> String {
    let std::net::SocketAddr::V4(v4) = addr else { return addr.to_string() };
    let mut text = String::with_capacity(21);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text.push(':');
    text.push_str(digits.format(v4.port()));
    text
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{peer_text, token_of};

    #[test]
    fn peer_text_is_what_display_writes() {
        for addr in ["127.0.0.1:9", "0.0.0.0:0", "255.255.255.255:65535", "10.20.3.4:443", "[::1]:8080"] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(peer_text(addr), addr.to_string());
        }
    }

    #[test]
    fn token_from_raw_or_json_body() {
        assert_eq!(token_of(b"abc.def.ghi"), "abc.def.ghi");
        assert_eq!(token_of(b" abc \n"), "abc");
        assert_eq!(token_of(br#"{"token":"t1","platform":2}"#), "t1");
    }
}
