//! WebSocket clients (RFC 6455) over hyper's HTTP/1.1 upgrade, plus `GET /ping` on the same
//! port (connectsrv).
//!
//! Any path accepts the upgrade (`/ws` by convention). Binary frames carry binary packets,
//! text frames JSON packets or go-push messages; the gateway answers in the form the client
//! last used. A `token` query parameter (`/ws?token=...`) logs the session in at once, for
//! clients that cannot send a login packet first (go-push's).
//! The HTTP request must arrive within `handshake_ms` (leaf's `HTTPTimeout`).
//!
//! Buffers are sized for many idle connections: a 1 KiB read buffer (`READ_BUFFER` of the
//! transport module; tungstenite's default of 128 KiB cost ~136 KiB per idle connection) and
//! a write buffer that exists only while output waits for the socket
//! ([`ws_io`](super::ws_io)).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::driver;
use super::session_io::{Inbound, Transport};
use super::ws_io::{ControlSink, Frames, OP_BINARY, OP_TEXT, ReadSide};
use super::{Admission, SessionCtx};
use crate::protocol::client::{self, HEADER_LEN, SharedPacket};
use crate::protocol::gopush;
use crate::session::{CloseReason, SessionHandle, TransportKind};

use super::READ_BUFFER;

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// What a plain WebSocket listener writes to a connection an abuse limit refused at accept.
pub(crate) const REFUSED: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";

/// Serves one accepted connection (plain TCP, or TLS after its handshake): HTTP until it
/// upgrades, then a WebSocket session.
pub(crate) async fn serve<S>(ctx: Arc<SessionCtx>, stream: S, peer: SocketAddr, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The admission follows the connection into the WebSocket session after the upgrade.
    let permit = Arc::new(Mutex::new(Some(admission)));
    let handshake = Duration::from_millis(ctx.config.timeouts.handshake_ms);
    let core_shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ctx, permit) = (ctx.clone(), permit.clone());
        async move { Ok::<_, Infallible>(handle(ctx, req, peer, &permit)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let shutdown = core_shutdown;
    tokio::select! {
        // An upgraded connection has left `conn` already; this only ends plain HTTP ones.
        _ = shutdown.cancelled() => {}
        served = tokio::time::timeout(handshake, conn) => match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%peer, "http connection error: {e}"),
            Err(_) => tracing::debug!(%peer, "http request not completed within handshake_ms"),
        },
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|part| part.trim().eq_ignore_ascii_case(token))))
}

fn handle(
    ctx: Arc<SessionCtx>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    permit: &Mutex<Option<Admission>>,
) -> Response<Full<Bytes>> {
    let upgrade =
        header_has(&req, header::CONNECTION, "upgrade") && header_has(&req, header::UPGRADE, "websocket");
    if !upgrade {
        return match (req.method(), req.uri().path()) {
            (&Method::GET, "/ping") => text(StatusCode::OK, "pong"),
            _ => text(StatusCode::NOT_FOUND, "not found: use GET /ping or a WebSocket upgrade\n"),
        };
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrade needs GET\n");
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut response = text(StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13\n");
        response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    // RFC 6455 section 4.2.1: the key is 16 bytes, base64-encoded.
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    let decoded = key.and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.as_bytes()).ok());
    let Some(key) = key.filter(|_| decoded.is_some_and(|d| d.len() == 16)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes, base64 (RFC 6455 section 4.2.1)\n",
        );
    };
    let origins = &ctx.config.security.allowed_origins;
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origins.is_empty()
        && !origins.iter().any(|allowed| allowed.as_bytes() == origin.as_bytes())
    {
        return text(StatusCode::FORBIDDEN, "this Origin may not open a WebSocket here\n");
    }
    let token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    });
    if token.is_some() && !ctx.config.security.token_in_query {
        return text(StatusCode::BAD_REQUEST, "`?token=` is turned off here: send a login packet\n");
    }
    let Some(permit) = permit.lock().take() else {
        return text(StatusCode::BAD_REQUEST, "connection already upgraded\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = ctx.config.limits.max_msg_len + HEADER_LEN;
    // tungstenite only reads; its own answers (pongs, close replies) are written at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let echo = ctx.config.listen.ws_echo_path.as_deref().is_some_and(|p| p == req.uri().path());
    ctx.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) if echo => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let (tx, control) = flume::bounded(ECHO_CONTROL_QUEUE);
                let read = ReadSide::new(read, ControlSink::Channel(tx));
                let ws = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {}
                    _ = echo_messages(ws, write, control) => {}
                }
            }
            Ok(upgraded) => {
                let read = ReadSide::new(TokioIo::new(upgraded), ControlSink::None);
                let stream = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
                let routes = &ctx.config.routes;
                let ids = gopush::Ids {
                    heartbeat: routes.heartbeat,
                    error: routes.error,
                    join: routes.join,
                    leave: routes.leave,
                };
                let transport =
                    WsTransport { stream: Box::new(stream), out: Frames::default(), mode: MODE_BINARY, ids };
                driver::run(ctx, TransportKind::WebSocket, peer, token, transport).await;
            }
            Err(e) => tracing::debug!(%peer, "upgrade failed: {e}"),
        }
        drop(permit);
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Answers (pongs, close replies) the conformance echo may have waiting; a client that sends
/// more pings than this without reading loses the excess pongs (RFC 6455 section 5.5.3 lets a
/// pong answer only the latest ping).
const ECHO_CONTROL_QUEUE: usize = 64;

/// A session's WebSocket: tungstenite reads through it; the gateway writes to its `io`.
type WsStream = WebSocketStream<ReadSide<Upgraded>>;
/// The conformance echo's: tungstenite reads one half, the echo writes the other.
type EchoRead = WebSocketStream<ReadSide<tokio::io::ReadHalf<Upgraded>>>;

/// The conformance echo (`listen.ws_echo_path`): every text and binary message back verbatim,
/// over the same WebSocket layer, buffers and size limits as sessions; errors close with the
/// codes sessions use (1007 invalid UTF-8, 1009 too big, 1002 protocol errors).
async fn echo_messages(
    mut ws: EchoRead,
    mut write: tokio::io::WriteHalf<Upgraded>,
    control: flume::Receiver<Bytes>,
) {
    let mut out = Frames::default();
    loop {
        let next = tokio::select! {
            biased;
            Ok(frames) = control.recv_async() => {
                out.control(&frames);
                if out.write_to(&mut write).await.is_err() || out.closed() {
                    return;
                }
                continue;
            }
            next = ws.next() => next,
        };
        if let Some(Ok(Message::Close(_))) = next {
            // One more poll makes tungstenite write its close reply (it echoes the code).
            let _ = ws.next().now_or_never();
        }
        // What tungstenite answered while reading this message (pongs) goes before its echo.
        while let Ok(frames) = control.try_recv() {
            out.control(&frames);
        }
        let end = match next {
            Some(Ok(Message::Text(text))) => {
                out.message(OP_TEXT, text.len(), &[text.as_bytes()]);
                None
            }
            Some(Ok(Message::Binary(data))) => {
                out.message(OP_BINARY, data.len(), &[&data]);
                None
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(_))) | None => Some(None),
            Some(Err(WsError::Utf8(_))) => Some(Some(CloseReason::InvalidUtf8)),
            Some(Err(WsError::Capacity(_))) => Some(Some(CloseReason::MessageTooBig)),
            Some(Err(WsError::Protocol(_))) => Some(Some(CloseReason::TransportError)),
            Some(Err(_)) => Some(None),
        };
        if let Some(Some(reason)) = end {
            out.close(reason.code(), reason.name());
        }
        if out.write_to(&mut write).await.is_err() || out.closed() || end.is_some() {
            return;
        }
    }
}

/// What the client last sent, and so how packets are encoded: binary packets, JSON packets or
/// go-push messages.
const MODE_BINARY: u8 = 0;
const MODE_JSON: u8 = 1;
const MODE_GOPUSH: u8 = 2;

/// A session's WebSocket connection, both directions.
struct WsTransport {
    /// Boxed: tungstenite's state (~300 bytes) stays out of the session's future, which
    /// exists for every idle session.
    stream: Box<WsStream>,
    out: Frames,
    /// What the client last sent, and so how packets are encoded (`MODE_*`).
    mode: u8,
    ids: gopush::Ids,
}

impl WsTransport {
    /// Decodes one message; `None` for those that carry nothing (pings, answered by
    /// tungstenite; pongs; raw frames).
    fn decode(&mut self, message: Message) -> Option<Inbound> {
        Some(match message {
            Message::Binary(data) => {
                self.mode = MODE_BINARY;
                match client::decode_binary(data) {
                    Ok(packet) => Inbound::Packet(packet),
                    Err(e) => Inbound::Failed(CloseReason::MalformedFrame, e.to_string()),
                }
            }
            Message::Text(text) => match client::decode_json(text.as_str()) {
                Ok(packet) => {
                    self.mode = MODE_JSON;
                    Inbound::Packet(packet)
                }
                // Not a packet: a go-push message?
                Err(e) if !text.contains("\"type\"") => {
                    Inbound::Failed(CloseReason::MalformedJson, e.to_string())
                }
                Err(_) => match gopush::decode(text.as_str()) {
                    Ok(request) => {
                        self.mode = MODE_GOPUSH;
                        Inbound::GoPush(request)
                    }
                    Err(e) => Inbound::Failed(CloseReason::MalformedJson, e),
                },
            },
            Message::Close(_) => {
                // One more poll makes tungstenite queue its close reply (it echoes the
                // client's code) ahead of the session's close.
                let _ = self.stream.next().now_or_never();
                Inbound::Closed
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
        })
    }
}

impl Transport for WsTransport {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            let message = match ready!(self.stream.poll_next_unpin(cx)) {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Inbound::Closed);
                }
                Some(Err(WsError::Capacity(e))) => {
                    return Poll::Ready(Inbound::Failed(CloseReason::MessageTooBig, e.to_string()));
                }
                Some(Err(WsError::Utf8(e))) => {
                    return Poll::Ready(Inbound::Failed(CloseReason::InvalidUtf8, e));
                }
                Some(Err(e)) => {
                    return Poll::Ready(Inbound::Failed(CloseReason::TransportError, e.to_string()));
                }
                Some(Ok(message)) => message,
            };
            if let Some(inbound) = self.decode(message) {
                return Poll::Ready(inbound);
            }
        }
    }

    fn attach(&mut self, session: &SessionHandle) {
        self.stream.get_mut().control = ControlSink::Session(session.clone());
    }

    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
        let text = match self.mode {
            MODE_JSON => client::encode_json(msg_id, seq, body),
            MODE_GOPUSH => gopush::encode(&self.ids, msg_id, body),
            _ => {
                let header = client::binary_header(msg_id, seq);
                self.out.message(OP_BINARY, HEADER_LEN + body.len(), &[&header, body]);
                return Ok(());
            }
        };
        self.out.message(OP_TEXT, text.len(), &[text.as_bytes()]);
        Ok(())
    }

    fn put_shared(&mut self, packet: &SharedPacket) -> std::io::Result<()> {
        let (opcode, frame): (_, &[u8]) = match self.mode {
            MODE_JSON => (OP_TEXT, packet.json().as_bytes()),
            MODE_GOPUSH => (OP_TEXT, packet.gopush(&self.ids).as_bytes()),
            _ => (OP_BINARY, packet.binary()),
        };
        self.out.message(opcode, frame.len(), &[frame]);
        Ok(())
    }

    fn put_control(&mut self, frame: &[u8]) {
        self.out.control(frame);
    }

    fn put_close(&mut self, reason: CloseReason, message: &str) {
        // RFC 6455 section 5.5: a control frame payload is at most 125 bytes (2 for the code).
        let mut text = String::from(reason.name());
        if !message.is_empty() {
            text.push_str(": ");
            text.extend(message.chars().take(80));
        }
        // The connection drops once the close frame is written: waiting for the client's
        // close reply (RFC 6455 section 7.1.1 allows the server to close the TCP connection
        // first) would let a client that never reads hold the session. After a
        // client-initiated close tungstenite's reply went out already, and this adds nothing.
        self.out.close(reason.code(), &text);
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.out.poll_write_to(&mut self.stream.get_mut().io, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session's future holds the transport by value (docs/benchmarks.md, idle
    /// sessions): tungstenite's state stays behind a pointer, whatever it weighs.
    #[test]
    fn the_session_transport_keeps_tungstenite_boxed() {
        assert!(std::mem::size_of::<WsStream>() > 128, "{}", std::mem::size_of::<WsStream>());
        assert!(std::mem::size_of::<WsTransport>() <= 80, "{}", std::mem::size_of::<WsTransport>());
    }
}
