//! WebSocket clients (RFC 6455) over hyper's HTTP/1.1 upgrade, plus `GET /ping` on the same
//! port (connectsrv).
//!
//! Any path accepts the upgrade (`/ws` by convention). Binary frames carry binary packets,
//! text frames JSON packets or go-push messages; the gateway answers in the form the client
//! last used. A `token` query parameter (`/ws?token=...`) logs the session in at once, for
//! clients that cannot send a login packet first (go-push's).
//! The HTTP request must arrive within `handshake_ms` (leaf's `HTTPTimeout`).
//!
//! Buffers are sized for many idle connections: no read buffer of its own while no frame is
//! partly received ([`ws_read`](super::ws_read): reads land in a buffer shared per worker
//! thread) and a write buffer that exists only while output waits for the socket
//! ([`ws_io`](super::ws_io)).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::driver;
use super::session_io::{CLOSE_LINGER, Inbound, Transport, poll_discard};
use super::ws_io::{self, Frames, OP_BINARY, OP_TEXT};
use super::ws_read::{Frame, FrameReader, Text};
use super::{Admission, SessionCtx};
use crate::protocol::client::{self, HEADER_LEN, SharedPacket};
use crate::protocol::gopush;
use crate::session::{CloseReason, SessionHandle, TransportKind};

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
    let echo = ctx.config.listen.ws_echo_path.as_deref().is_some_and(|p| p == req.uri().path());
    ctx.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) if echo => {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {}
                    _ = echo_messages(TokioIo::new(upgraded), FrameReader::new(max)) => {}
                }
            }
            Ok(upgraded) => {
                let routes = &ctx.config.routes;
                let ids = gopush::Ids {
                    heartbeat: routes.heartbeat,
                    error: routes.error,
                    join: routes.join,
                    leave: routes.leave,
                };
                let transport = WsTransport {
                    io: TokioIo::new(upgraded),
                    reader: FrameReader::new(max),
                    out: Frames::default(),
                    session: None,
                    mode: MODE_BINARY,
                    ids,
                };
                // A task of its own, holding the session's future and the admission alone:
                // this block's state keeps what it captured for as long as it runs (the
                // upgrade, the context, the token, the address: bytes of every idle session).
                let session = driver::run(ctx.clone(), TransportKind::WebSocket, peer, token, transport);
                ctx.tasks.spawn(session.map(move |()| drop(permit)));
            }
            Err(e) => tracing::debug!(%peer, "upgrade failed: {e}"),
        }
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

/// The conformance echo (`listen.ws_echo_path`): every text and binary message back verbatim,
/// over the same WebSocket reader, writer and size limits as sessions; errors close with the
/// codes sessions use (1007 invalid UTF-8, 1009 too big, 1002 protocol errors). Each answer is
/// written before the next frame is read.
async fn echo_messages(mut io: Upgraded, mut reader: FrameReader) {
    let mut out = Frames::default();
    loop {
        let end = match std::future::poll_fn(|cx| reader.poll_frame(&mut io, cx)).await {
            Ok(Frame::Text(text)) => {
                let data = text.into_bytes();
                out.message(OP_TEXT, data.len(), &[&data]);
                false
            }
            Ok(Frame::Binary(data)) => {
                out.message(OP_BINARY, data.len(), &[&data]);
                false
            }
            Ok(Frame::Ping(payload)) => {
                out.control(&ws_io::pong(&payload));
                false
            }
            Ok(Frame::Close(code)) => {
                out.control(&ws_io::close_reply(code));
                true
            }
            Ok(Frame::Eof) => true,
            Err((reason, _)) => {
                out.close(reason.code(), reason.name());
                true
            }
        };
        if out.write_to(&mut io).await.is_err() {
            return;
        }
        if end {
            let _ = io.shutdown().await;
            let _ = tokio::time::timeout(CLOSE_LINGER, std::future::poll_fn(|cx| poll_discard(&mut io, cx)))
                .await;
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
    io: Upgraded,
    reader: FrameReader,
    out: Frames,
    /// Where answers to the client's pings and close go: the session's queue, so they are
    /// bounded as packets are and reach the client in order with the packets around them.
    session: Option<SessionHandle>,
    /// What the client last sent, and so how packets are encoded (`MODE_*`).
    mode: u8,
    ids: gopush::Ids,
}

impl WsTransport {
    /// Decodes one binary message: a packet with the 8-byte header.
    fn decode_binary(&mut self, data: Bytes) -> Inbound {
        self.mode = MODE_BINARY;
        match client::decode_binary(data) {
            Ok(packet) => Inbound::Packet(packet),
            Err(e) => Inbound::Failed(CloseReason::MalformedFrame, e.to_string()),
        }
    }

    /// Decodes one text message (UTF-8 checked by the reader): a JSON packet or a go-push
    /// message.
    fn decode_text(&mut self, text: &Text) -> Inbound {
        let text = text.as_str();
        match client::decode_json(text) {
            Ok(packet) => {
                self.mode = MODE_JSON;
                Inbound::Packet(packet)
            }
            // Not a packet: a go-push message?
            Err(e) if !text.contains("\"type\"") => {
                Inbound::Failed(CloseReason::MalformedJson, e.to_string())
            }
            Err(_) => match gopush::decode(text) {
                Ok(request) => {
                    self.mode = MODE_GOPUSH;
                    Inbound::GoPush(request)
                }
                Err(e) => Inbound::Failed(CloseReason::MalformedJson, e),
            },
        }
    }

    /// Queues an answer to the client's control frame. One the queue cannot take is dropped:
    /// the session is being closed as a slow consumer then.
    fn answer(&self, frame: Bytes) {
        if let Some(session) = &self.session {
            let _queued = session.send_control(frame);
        }
    }
}

impl Transport for WsTransport {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            let frame = match ready!(self.reader.poll_frame(&mut self.io, cx)) {
                Ok(frame) => frame,
                Err((reason, message)) => return Poll::Ready(Inbound::Failed(reason, message)),
            };
            match frame {
                Frame::Text(text) => return Poll::Ready(self.decode_text(&text)),
                Frame::Binary(data) => return Poll::Ready(self.decode_binary(data)),
                Frame::Ping(payload) => self.answer(ws_io::pong(&payload)),
                Frame::Close(code) => {
                    // Queued ahead of the session's close, which then adds nothing.
                    self.answer(ws_io::close_reply(code));
                    return Poll::Ready(Inbound::Closed);
                }
                Frame::Eof => {
                    return Poll::Ready(Inbound::Failed(
                        CloseReason::TransportError,
                        "connection closed without a close frame".into(),
                    ));
                }
            }
        }
    }

    fn attach(&mut self, session: &SessionHandle) {
        self.session = Some(session.clone());
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
        // client-initiated close the reply went out already, and this adds nothing.
        self.out.close(reason.code(), &text);
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.out.poll_write_to(&mut self.io, cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // RFC 6455 section 7.1.1: the server should close the TCP connection first.
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        poll_discard(&mut self.io, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session's future holds the transport by value (docs/architecture.md, "An idle
    /// session in memory"): every byte here is paid by every idle session. 168 bytes on
    /// x86-64: the upgraded connection 48, the reader 48, the write buffer 40, the rest 32.
    #[test]
    fn the_session_transport_stays_small() {
        assert!(std::mem::size_of::<WsTransport>() <= 176, "{}", std::mem::size_of::<WsTransport>());
    }
}
