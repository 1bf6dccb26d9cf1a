//! A small wasmgate client over WebSocket (binary or JSON text frames) or length-prefixed TCP,
//! used by the `client` CLI and by the end-to-end tests.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wasmgate::config::TcpFramingConfig;
use wasmgate::protocol::client::{self, Packet};

/// What the client read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Packet(Packet),
    /// The server closed; WebSocket close code and reason when there was a close frame.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

impl Received {
    /// The packet, or an error describing the close.
    pub fn packet(self) -> anyhow::Result<Packet> {
        match self {
            Self::Packet(p) => Ok(p),
            Self::Closed { code, reason } => Err(anyhow!("connection closed (code {code:?}: {reason})")),
        }
    }
}

/// A byte stream a client runs over: a plain TCP stream, or a TLS stream over one.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

type Io = Box<dyn ByteStream>;

enum Transport {
    Ws { ws: Box<WebSocketStream<Io>>, text: bool },
    Tcp { framed: Framed<Io, LengthDelimitedCodec> },
}

/// A connected client.
pub struct Client {
    transport: Transport,
    next_seq: u32,
}

#[derive(Deserialize)]
struct JsonIn {
    id: u32,
    seq: u32,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    data_b64: Option<String>,
}

/// tungstenite's defaults with a 16 KiB read buffer: tungstenite zero-fills the whole read
/// size (128 KiB by default) before every read, even one that finds nothing, which made it
/// the largest cost of a fan-out member (docs/benchmarks.md, "Fan-out without allocations").
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

impl Client {
    /// Connects over WebSocket to `url` (`ws://host:port/ws`); `text` selects JSON text frames.
    pub async fn ws(url: &str, text: bool) -> anyhow::Result<Self> {
        let request = url.into_client_request().with_context(|| format!("bad URL {url}"))?;
        let authority = request.uri().authority().context("the URL names no host")?.to_string();
        let stream =
            TcpStream::connect(&authority).await.with_context(|| format!("connecting to {authority}"))?;
        Self::ws_over(stream, url, text).await
    }

    /// Opens a WebSocket to `url` over an established `stream` (e.g. TLS for `wss://`).
    pub async fn ws_over(stream: impl ByteStream + 'static, url: &str, text: bool) -> anyhow::Result<Self> {
        let io: Io = Box::new(stream);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, io, Some(ws_config()))
            .await
            .with_context(|| format!("upgrading to {url}"))?;
        Ok(Self { transport: Transport::Ws { ws: Box::new(ws), text }, next_seq: 1 })
    }

    /// Connects over TCP with the gateway's length-prefix framing.
    pub async fn tcp(addr: SocketAddr, framing: &TcpFramingConfig) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        Ok(Self::tcp_over(stream, framing))
    }

    /// A TCP-framed client over an established `stream` (e.g. TLS).
    pub fn tcp_over(stream: impl ByteStream + 'static, framing: &TcpFramingConfig) -> Self {
        let io: Io = Box::new(stream);
        let codec = wasmgate::downstream::tcp::codec(framing, 16 << 20);
        Self { transport: Transport::Tcp { framed: Framed::new(io, codec) }, next_seq: 1 }
    }

    /// Sends a packet with the next sequence number; returns that number.
    pub async fn send(&mut self, msg_id: u32, body: &[u8]) -> anyhow::Result<u32> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send_seq(msg_id, seq, body).await?;
        Ok(seq)
    }

    /// Sends a packet with an explicit sequence number.
    pub async fn send_seq(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> anyhow::Result<()> {
        match &mut self.transport {
            Transport::Ws { ws, text: true } => {
                #[derive(Serialize)]
                struct JsonOut<'a> {
                    id: u32,
                    seq: u32,
                    data: &'a serde_json::value::RawValue,
                }
                let text = std::str::from_utf8(body).context("text mode needs a UTF-8 body")?;
                let owned;
                let data = match serde_json::from_str::<&serde_json::value::RawValue>(text) {
                    Ok(raw) => raw,
                    Err(_) => {
                        owned = serde_json::value::to_raw_value(text)?;
                        &owned
                    }
                };
                ws.send(Message::text(serde_json::to_string(&JsonOut { id: msg_id, seq, data })?)).await?;
            }
            Transport::Ws { ws, text: false } => {
                let mut buf = BytesMut::new();
                client::encode_binary(msg_id, seq, body, &mut buf);
                ws.send(Message::Binary(buf.freeze())).await?;
            }
            Transport::Tcp { framed } => {
                let mut buf = BytesMut::new();
                client::encode_binary(msg_id, seq, body, &mut buf);
                framed.send(buf.freeze()).await?;
            }
        }
        Ok(())
    }

    /// Sends a raw WebSocket message (tests of malformed input).
    pub async fn send_ws_raw(&mut self, message: Message) -> anyhow::Result<()> {
        match &mut self.transport {
            Transport::Ws { ws, .. } => Ok(ws.send(message).await?),
            Transport::Tcp { .. } => bail!("not a WebSocket client"),
        }
    }

    /// Sends a raw TCP frame (the length prefix is added).
    pub async fn send_tcp_raw(&mut self, frame: Bytes) -> anyhow::Result<()> {
        match &mut self.transport {
            Transport::Tcp { framed } => Ok(framed.send(frame).await?),
            Transport::Ws { .. } => bail!("not a TCP client"),
        }
    }

    /// Closes politely: a WebSocket close handshake (waiting up to 1 s for the server's
    /// answer), or a TCP shutdown.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        match &mut self.transport {
            Transport::Ws { ws, .. } => {
                (**ws).close(None).await?;
                let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            }
            Transport::Tcp { framed } => {
                use tokio::io::AsyncWriteExt;
                framed.get_mut().shutdown().await?;
            }
        }
        Ok(())
    }

    /// Reads the next packet or the close.
    pub async fn recv(&mut self) -> anyhow::Result<Received> {
        match &mut self.transport {
            Transport::Ws { ws, .. } => loop {
                match ws.next().await {
                    None => return Ok(Received::Closed { code: None, reason: String::new() }),
                    Some(Err(e)) => {
                        return Ok(Received::Closed { code: None, reason: format!("transport error: {e}") });
                    }
                    Some(Ok(Message::Binary(data))) => {
                        return Ok(Received::Packet(client::decode_binary(data)?));
                    }
                    Some(Ok(Message::Text(text))) => {
                        return Ok(Received::Packet(decode_text(text.as_str())?));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((None, String::new()), |f| {
                            (Some(u16::from(f.code)), f.reason.to_string())
                        });
                        return Ok(Received::Closed { code, reason });
                    }
                    Some(Ok(_)) => continue,
                }
            },
            Transport::Tcp { framed } => match framed.next().await {
                None => Ok(Received::Closed { code: None, reason: String::new() }),
                Some(Err(e)) => Ok(Received::Closed { code: None, reason: format!("transport error: {e}") }),
                Some(Ok(frame)) => Ok(Received::Packet(client::decode_binary(frame.freeze())?)),
            },
        }
    }

    /// [`Client::recv`] with a time limit.
    pub async fn recv_within(&mut self, limit: Duration) -> anyhow::Result<Received> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| anyhow!("nothing received within {limit:?}"))?
    }

    /// Reads until a packet with `msg_id` and `seq` arrives, returning it (other packets are
    /// returned in the second element, in order).
    pub async fn recv_reply(
        &mut self,
        msg_id: u32,
        seq: u32,
        limit: Duration,
    ) -> anyhow::Result<(Packet, Vec<Packet>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let packet = self.recv_within(left).await?.packet()?;
            if packet.msg_id == msg_id && packet.seq == seq {
                return Ok((packet, others));
            }
            others.push(packet);
        }
    }

    /// Logs in with `token` (login message id `login_id`) and returns the login reply.
    /// Errors if the gateway answers with anything else.
    pub async fn login(&mut self, login_id: u32, token: &str) -> anyhow::Result<Packet> {
        let seq = self.send(login_id, token.as_bytes()).await?;
        let packet = self.recv_within(Duration::from_secs(10)).await?.packet()?;
        if packet.msg_id != login_id || packet.seq != seq {
            bail!(
                "msg_id={} seq={} body={}",
                packet.msg_id,
                packet.seq,
                String::from_utf8_lossy(&packet.body)
            );
        }
        Ok(packet)
    }
}

fn decode_text(text: &str) -> anyhow::Result<Packet> {
    let json: JsonIn = serde_json::from_str(text)?;
    let body = match (json.data, json.data_b64) {
        (Some(raw), _) if raw.get().starts_with('"') => {
            Bytes::from(serde_json::from_str::<String>(raw.get())?)
        }
        (Some(raw), _) => Bytes::from(raw.get().to_string()),
        (None, Some(b64)) => {
            use base64::Engine as _;
            Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64)?)
        }
        (None, None) => Bytes::new(),
    };
    Ok(Packet { msg_id: json.id, seq: json.seq, body, es_id: None })
}

/// Mints an HS256 JWT for `user` that the default auth script accepts when configured with
/// the same `secret` (and `issuer`, if set), valid for `ttl_s` seconds (negative: already
/// expired).
pub fn mint_token(secret: &str, user: &str, issuer: Option<&str>, ttl_s: i64) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
        iat: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let claims = Claims { sub: user, exp: now + ttl_s, iat: now, iss: issuer };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)?)
}
