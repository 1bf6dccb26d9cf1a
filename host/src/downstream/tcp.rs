//! Length-prefixed TCP clients (leaf's `LenMsgLen`, `LittleEndian`, `MaxMsgLen`).
//!
//! Each frame is a 2- or 4-byte length (big-endian unless `little_endian`) followed by a
//! binary client packet (see [`crate::protocol::client`]). A frame longer than
//! `max_msg_len + 8` closes the connection after an error frame `message_too_big`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{
    Encoder as _, FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError,
};

use super::driver::{self, Inbound, PacketReader, PacketWriter};
use super::{Admission, SessionCtx};
use crate::config::TcpFramingConfig;
use crate::protocol::client::{self, HEADER_LEN};
use crate::session::{CloseReason, ErrorCode, TransportKind};

use super::{READ_BUFFER, WRITE_BUFFER};

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

/// Serves one accepted plain TCP client until it closes (its halves split without a lock).
pub(crate) async fn serve(ctx: Arc<SessionCtx>, stream: TcpStream, peer: SocketAddr, admission: Admission) {
    let (read, write) = stream.into_split();
    run(ctx, read, write, peer).await;
    drop(admission);
}

/// Serves one TLS client (after its handshake) until it closes.
pub(crate) async fn serve_tls<S>(ctx: Arc<SessionCtx>, stream: S, peer: SocketAddr, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    run(ctx, read, write, peer).await;
    drop(admission);
}

async fn run<R, W>(ctx: Arc<SessionCtx>, read: R, write: W, peer: SocketAddr)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let framing = &ctx.config.tcp;
    let max_in = ctx.config.limits.max_msg_len + HEADER_LEN;
    // Outbound packets may be larger than what clients may send; bound them by the prefix.
    let max_out = if framing.len_msg_len == 2 { u16::MAX as usize } else { u32::MAX as usize };
    // Buffers sized for idle sessions (tokio-util's default is 8 KiB each): the write buffer
    // starts empty and grows with what is queued, flushed at the same boundary as before.
    let reader = TcpReader { framed: FramedRead::with_capacity(read, codec(framing, max_in), READ_BUFFER) };
    let mut framed = FramedWrite::with_capacity(write, codec(framing, max_out), 0);
    framed.set_backpressure_boundary(WRITE_BUFFER);
    let writer = TcpWriter { framed, grown: false };
    driver::run(ctx.clone(), TransportKind::Tcp, peer, None, reader, writer).await;
}

struct TcpReader<R> {
    framed: FramedRead<R, LengthDelimitedCodec>,
}

impl<R: AsyncRead + Unpin + Send> PacketReader for TcpReader<R> {
    async fn next(&mut self) -> Inbound {
        match self.framed.next().await {
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
        }
    }
}

struct TcpWriter<W> {
    framed: FramedWrite<W, LengthDelimitedCodec>,
    /// A frame larger than [`WRITE_BUFFER`] went through the buffer since it was last
    /// replaced: the next flush lets go of the grown allocation.
    grown: bool,
}

impl<W: AsyncWrite + Unpin + Send + 'static> PacketWriter for TcpWriter<W> {
    async fn feed(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
        self.grown |= HEADER_LEN + body.len() > WRITE_BUFFER;
        let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
        client::encode_binary(msg_id, seq, body, &mut buf);
        self.framed.feed(buf.freeze()).await
    }

    async fn feed_shared(&mut self, packet: &client::SharedPacket) -> std::io::Result<()> {
        self.grown |= packet.binary().len() > WRITE_BUFFER;
        self.framed.feed(packet.binary().clone()).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        // The buffer kept the allocation of the largest batch (a 64 KiB push to 1,000 idle
        // sessions stayed as 64 MB of empty buffers): let it go once written.
        if std::mem::take(&mut self.grown) {
            *self.framed.write_buffer_mut() = BytesMut::new();
        }
        Ok(())
    }

    async fn close(&mut self, _reason: CloseReason, _message: &str) -> std::io::Result<()> {
        // TCP has no close frame: the error frame queued before this told the client why.
        SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        self.framed.get_mut().shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a large frame is read, the read buffer no longer lives in the large frame's
    /// allocation: tokio-util's codec reserves room for the next length prefix while the frame
    /// is still held, and `bytes` then moves the rest to a buffer of the starting capacity.
    /// (docs/benchmarks.md relies on it: a TCP session keeps no read buffer as large as the
    /// largest message its client sent.)
    #[tokio::test]
    async fn a_reader_lets_go_of_a_large_frame_s_buffer() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut reader = TcpReader {
            framed: FramedRead::with_capacity(
                ours,
                codec(&TcpFramingConfig::default(), 1 << 20),
                READ_BUFFER,
            ),
        };
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
        let Inbound::Packet(first) = reader.next().await else { panic!("the first packet") };
        assert_eq!(first.msg_id, 599);
        let Inbound::Packet(large) = reader.next().await else { panic!("the large packet") };
        assert_eq!((large.msg_id, large.body.len()), (600, 64 << 10));
        let large_bytes = large.body.as_ptr() as usize..large.body.as_ptr() as usize + (65 << 10);
        drop(large);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &frames[split..]).await.expect("write");
        let Inbound::Packet(small) = reader.next().await else { panic!("the small packet") };
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

    /// After a large frame is written the writer keeps no large allocation: the next small
    /// frame is buffered in a small one (an emptied `BytesMut` would take its old allocation
    /// back on `reserve`).
    #[tokio::test]
    async fn a_flushed_writer_lets_go_of_a_large_buffer() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut framed = FramedWrite::with_capacity(ours, codec(&TcpFramingConfig::default(), 1 << 24), 0);
        framed.set_backpressure_boundary(WRITE_BUFFER);
        let mut writer = TcpWriter { framed, grown: false };
        writer.feed(600, 0, &vec![7u8; 64 << 10]).await.expect("feed");
        writer.flush().await.expect("flush");
        writer.feed(601, 0, b"small").await.expect("feed");
        let capacity = writer.framed.write_buffer().capacity();
        assert!(capacity <= WRITE_BUFFER, "a {capacity}-byte buffer kept for a small frame");
        writer.flush().await.expect("flush");
        let mut got = vec![0u8; 2 * (4 + HEADER_LEN) + (64 << 10) + 5];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got).await.expect("both frames arrived whole");
        assert_eq!(&got[got.len() - 5..], b"small");
    }
}
