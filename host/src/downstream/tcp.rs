//! Length-prefixed TCP clients (leaf's `LenMsgLen`, `LittleEndian`, `MaxMsgLen`).
//!
//! Each frame is a 2- or 4-byte length (big-endian unless `little_endian`) followed by a
//! binary client packet (see [`crate::protocol::client`]). A frame longer than
//! `max_msg_len + 8` closes the connection after an error frame `message_too_big`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder as _, FramedRead, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::driver;
use super::out_buf::OutBuf;
use super::session_io::{Inbound, Transport};
use super::{Admission, SessionCtx};
use crate::config::TcpFramingConfig;
use crate::protocol::client::{self, HEADER_LEN};
use crate::session::{CloseReason, ErrorCode, TransportKind};

use super::READ_BUFFER;

/// The length-prefix codec for a framing config; `max_frame` bounds decoded frames.
pub fn codec(framing: &TcpFramingConfig, max_frame: usize) -> LengthDelimitedCodec {
    let mut builder = LengthDelimitedCodec::builder();
    builder.length_field_length(framing.len_msg_len).max_frame_length(max_frame);
    if framing.little_endian {
        builder.little_endian();
    }
    builder.new_codec()
}

/// The frame a plain TCP listener writes to a connection an abuse limit refused at accept:
/// an error frame `rate_limited` in the configured framing.
pub(crate) fn refused(ctx: &SessionCtx) -> Bytes {
    let mut packet = BytesMut::new();
    let body =
        crate::session::error_body(ErrorCode::RateLimited.name(), "too many connections from this address");
    client::encode_binary(ctx.config.routes.error, 0, &body, &mut packet);
    let mut frame = BytesMut::new();
    match codec(&ctx.config.tcp, usize::MAX).encode(packet.freeze(), &mut frame) {
        Ok(()) => frame.freeze(),
        Err(_) => Bytes::new(),
    }
}

/// Serves one accepted plain TCP client until it closes.
pub(crate) async fn serve(ctx: Arc<SessionCtx>, stream: TcpStream, peer: SocketAddr, admission: Admission) {
    run(ctx, stream, peer).await;
    drop(admission);
}

/// Serves one TLS client (after its handshake) until it closes.
pub(crate) async fn serve_tls<S>(ctx: Arc<SessionCtx>, stream: S, peer: SocketAddr, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(ctx, stream, peer).await;
    drop(admission);
}

async fn run<S>(ctx: Arc<SessionCtx>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = &ctx.config.tcp;
    let max_in = ctx.config.limits.max_msg_len + HEADER_LEN;
    // Outbound packets may be larger than what clients may send; bound them by the prefix.
    let max_out = if framing.len_msg_len == 2 { u16::MAX as usize } else { u32::MAX as usize };
    // A 1 KiB read buffer (tokio-util's default is 8 KiB) and a write buffer that exists only
    // while output waits for the socket: both sized for idle sessions.
    let transport = TcpTransport {
        framed: FramedRead::with_capacity(stream, codec(framing, max_in), READ_BUFFER),
        encoder: codec(framing, max_out),
        out: OutBuf::default(),
    };
    driver::run(ctx.clone(), TransportKind::Tcp, peer, None, transport).await;
}

/// A session's TCP (or TLS) connection, both directions: frames are read through tokio-util's
/// codec, and written to the same stream from [`OutBuf`].
struct TcpTransport<S> {
    framed: FramedRead<S, LengthDelimitedCodec>,
    /// The framing for what is sent (its length bound is the prefix's, not `max_msg_len`).
    encoder: LengthDelimitedCodec,
    out: OutBuf,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for TcpTransport<S> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        self.framed.poll_next_unpin(cx).map(|next| match next {
            None => Inbound::Closed,
            Some(Ok(frame)) => match client::decode_binary(frame.freeze()) {
                Ok(packet) => Inbound::Packet(packet),
                Err(e) => Inbound::Failed(CloseReason::MalformedFrame, e.to_string()),
            },
            Some(Err(e)) if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => {
                Inbound::Failed(CloseReason::MessageTooBig, "frame longer than max_msg_len".into())
            }
            Some(Err(e)) => {
                tracing::debug!("tcp read failed: {e}");
                Inbound::Failed(CloseReason::TransportError, e.to_string())
            }
        })
    }

    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
        let mut packet = BytesMut::with_capacity(HEADER_LEN + body.len());
        client::encode_binary(msg_id, seq, body, &mut packet);
        self.encoder.encode(packet.freeze(), self.out.buf_mut())
    }

    fn put_shared(&mut self, packet: &client::SharedPacket) -> std::io::Result<()> {
        self.encoder.encode(packet.binary().clone(), self.out.buf_mut())
    }

    fn put_close(&mut self, _reason: CloseReason, _message: &str) {
        // TCP has no close frame: the error frame queued before the close told the client why.
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.out.poll_write_to(self.framed.get_mut(), cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.framed.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn transport(io: tokio::io::DuplexStream) -> TcpTransport<tokio::io::DuplexStream> {
        TcpTransport {
            framed: FramedRead::with_capacity(io, codec(&TcpFramingConfig::default(), 1 << 20), READ_BUFFER),
            encoder: codec(&TcpFramingConfig::default(), 1 << 24),
            out: OutBuf::default(),
        }
    }

    /// After a large frame is read, the read buffer no longer lives in the large frame's
    /// allocation: tokio-util's codec reserves room for the next length prefix while the frame
    /// is still held, and `bytes` then moves the rest to a buffer of the starting capacity.
    /// (docs/benchmarks.md relies on it: a TCP session keeps no read buffer as large as the
    /// largest message its client sent.)
    #[tokio::test]
    async fn a_reader_lets_go_of_a_large_frame_s_buffer() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut reader = transport(ours);
        let mut frames = BytesMut::new();
        let mut codec = codec(&TcpFramingConfig::default(), 1 << 20);
        for (msg_id, body) in [(599, vec![1u8; 700]), (600, vec![7u8; 64 << 10]), (601, b"small".to_vec())] {
            let mut packet = BytesMut::new();
            client::encode_binary(msg_id, 1, &body, &mut packet);
            codec.encode(packet.freeze(), &mut frames).expect("encode");
        }
        // The first two frames and the start of the third arrive together.
        let split = frames.len() - 6;
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &frames[..split]).await.expect("write");
        let Inbound::Packet(first) = poll_fn(|cx| reader.poll_next(cx)).await else {
            panic!("the first packet")
        };
        assert_eq!(first.msg_id, 599);
        let Inbound::Packet(large) = poll_fn(|cx| reader.poll_next(cx)).await else {
            panic!("the large packet")
        };
        assert_eq!((large.msg_id, large.body.len()), (600, 64 << 10));
        let large_bytes = large.body.as_ptr() as usize..large.body.as_ptr() as usize + (65 << 10);
        drop(large);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &frames[split..]).await.expect("write");
        let Inbound::Packet(small) = poll_fn(|cx| reader.poll_next(cx)).await else {
            panic!("the small packet")
        };
        assert_eq!((small.msg_id, &small.body[..]), (601, &b"small"[..]));
        let buffer = reader.framed.read_buffer();
        assert!(
            !large_bytes.contains(&(buffer.as_ptr() as usize)),
            "the read buffer kept the large frame's allocation"
        );
        assert!(
            buffer.capacity() <= READ_BUFFER,
            "a {}-byte read buffer kept after a small frame",
            buffer.capacity()
        );
    }

    /// After a large frame is written the transport keeps no large allocation, and what it
    /// wrote arrives whole and in order.
    #[tokio::test]
    async fn a_written_transport_lets_go_of_a_large_buffer() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut writer = transport(ours);
        writer.put(600, 0, &vec![7u8; 64 << 10]).expect("put");
        poll_fn(|cx| writer.poll_write_out(cx)).await.expect("written");
        assert_eq!(writer.buffered(), 0);
        writer.put(601, 0, b"small").expect("put");
        let capacity = writer.out.buf_mut().capacity();
        assert!(capacity <= super::super::WRITE_BUFFER, "a {capacity}-byte buffer kept for a small frame");
        poll_fn(|cx| writer.poll_write_out(cx)).await.expect("written");
        let mut got = vec![0u8; 2 * (4 + HEADER_LEN) + (64 << 10) + 5];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got).await.expect("both frames arrived whole");
        assert_eq!(&got[got.len() - 5..], b"small");
    }
}
