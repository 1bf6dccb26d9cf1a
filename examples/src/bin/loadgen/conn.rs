//! One load-generator connection to the gateway over either of its client transports:
//! WebSocket (RFC 6455, one binary frame per packet) or TCP (the gateway's length-prefix
//! framing, `downstream::tcp::codec` with the default `[tcp_framing]`: 4-byte big-endian
//! length). Both are seen as a sink and a stream of encoded packets, so a scenario is written
//! once for the two.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wasmgate::config::TcpFramingConfig;
use wasmgate::protocol::client::encode_binary;
use wasmgate_examples::client::mint_token;

use super::{LOGIN, SECRET};

/// The client transport a scenario's sessions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// WebSocket on the gateway's `listen.ws` port, path `/ws`.
    Ws,
    /// Length-prefixed TCP on the gateway's `listen.tcp` port.
    Tcp,
}

/// Writes encoded packets (one WebSocket binary frame or one length-prefixed TCP frame each).
pub type PacketSink = Pin<Box<dyn Sink<Bytes, Error = anyhow::Error> + Send>>;
/// Reads encoded packets; WebSocket frames other than binary are skipped; ends when the server
/// closes.
pub type PacketStream = Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>;

/// An open session, not split.
pub enum Conn {
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Tcp(Framed<TcpStream, LengthDelimitedCodec>),
    /// WebSocket over TLS (`wss://`; the `tls` scenario and the relay's `wasmgate-wss`).
    Wss(Box<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// The client's WebSocket settings: a 4 KiB read buffer and no write buffer, so a worker
/// holding thousands stays small.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// The next binary frame of `ws`; `None` once the server closed.
async fn next_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<anyhow::Result<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        return match ws.next().await? {
            Ok(Message::Binary(frame)) => Some(Ok(frame)),
            Ok(Message::Close(_)) => None,
            Ok(_) => continue,
            Err(e) => Some(Err(e.into())),
        };
    }
}

impl Conn {
    /// Speaks `transport` on a connected `stream` to `server`: the WebSocket handshake (a 4 KiB
    /// read buffer and no write buffer, so a worker holding thousands stays small) or nothing
    /// for TCP. Errors: the handshake's.
    pub async fn open(transport: Transport, stream: TcpStream, server: SocketAddr) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(match transport {
            Transport::Ws => {
                let url = format!("ws://{server}/ws");
                let (ws, _) = tokio_tungstenite::client_async_with_config(&url, stream, Some(ws_config()))
                    .await
                    .with_context(|| format!("WebSocket handshake with {url}"))?;
                Conn::Ws(Box::new(ws))
            }
            Transport::Tcp => Conn::Tcp(Framed::new(
                stream,
                wasmgate::downstream::tcp::codec(&TcpFramingConfig::default(), 1 << 20),
            )),
        })
    }

    /// `wss://` on a connected `stream` to `server`: the TLS handshake (server name
    /// `localhost`) with `tls`, then the WebSocket handshake. Errors: either handshake's.
    pub async fn open_wss(
        stream: TcpStream,
        server: SocketAddr,
        tls: &tokio_rustls::TlsConnector,
    ) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let stream = tls.connect(name, stream).await.context("TLS handshake")?;
        let url = format!("wss://{server}/ws");
        let (ws, _) = tokio_tungstenite::client_async_with_config(&url, stream, Some(ws_config()))
            .await
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok(Conn::Wss(Box::new(ws)))
    }

    /// Connects to `server` over `transport` from the kernel's choice of address.
    pub async fn connect(transport: Transport, server: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(server).await.with_context(|| format!("connecting to {server}"))?;
        Self::open(transport, stream, server).await
    }

    /// Sends one encoded packet.
    pub async fn send(&mut self, packet: Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Ws(ws) => ws.send(Message::Binary(packet)).await?,
            Conn::Wss(ws) => ws.send(Message::Binary(packet)).await?,
            Conn::Tcp(framed) => framed.send(packet).await?,
        }
        Ok(())
    }

    /// The next encoded packet; `None` once the server closed.
    pub async fn next_packet(&mut self) -> Option<anyhow::Result<Bytes>> {
        match self {
            Conn::Ws(ws) => next_binary(ws).await,
            Conn::Wss(ws) => next_binary(ws).await,
            Conn::Tcp(framed) => Some(framed.next().await?.map(BytesMut::freeze).map_err(Into::into)),
        }
    }

    /// Logs in as `user` with a token signed by the benchmark secret; waits up to `limit` for
    /// the answer. Errors: no answer in time, or the server closed.
    pub async fn login(&mut self, user: &str, limit: Duration) -> anyhow::Result<()> {
        let token = mint_token(SECRET, user, None, 3600)?;
        let mut frame = BytesMut::new();
        encode_binary(LOGIN, 1, token.as_bytes(), &mut frame);
        self.send(frame.freeze()).await?;
        match tokio::time::timeout(limit, self.next_packet()).await {
            Ok(Some(Ok(_))) => Ok(()),
            Ok(Some(Err(e))) => Err(e.context("reading the login answer")),
            Ok(None) => bail!("the server closed instead of answering the login"),
            Err(_) => bail!("no login answer within {limit:?}"),
        }
    }

    /// The two halves, for a writer and a reader that run apart.
    pub fn split(self) -> anyhow::Result<(PacketSink, PacketStream)> {
        Ok(match self {
            Conn::Ws(ws) => split_ws(*ws),
            Conn::Wss(ws) => split_ws(*ws),
            Conn::Tcp(framed) => {
                let (tx, rx) = framed.split();
                let rx = rx.map(|r| r.map(BytesMut::freeze).map_err(anyhow::Error::from));
                (Box::pin(tx.sink_map_err(anyhow::Error::from)), Box::pin(rx))
            }
        })
    }
}

/// A WebSocket session's two halves: binary frames out, binary frames in until the close.
fn split_ws<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> (PacketSink, PacketStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = ws.split();
    let tx = tx
        .sink_map_err(anyhow::Error::from)
        .with(|packet: Bytes| future::ready(Ok::<_, anyhow::Error>(Message::Binary(packet))));
    let rx = rx.take_while(|m| future::ready(!matches!(m, Ok(Message::Close(_))))).filter_map(|m| {
        future::ready(match m {
            Ok(Message::Binary(frame)) => Some(Ok(frame)),
            Ok(_) => None,
            Err(e) => Some(Err(e.into())),
        })
    });
    (Box::pin(tx), Box::pin(rx))
}
