//! Length-prefixed TCP clients (leaf's `LenMsgLen`, `LittleEndian`, `MaxMsgLen`).
//!
//! Each frame is a 2- or 4-byte length (big-endian unless `little_endian`) followed by a
//! binary client packet (see [`crate::protocol::client`]). A frame longer than
//! `max_msg_len + 8` closes the connection after an error frame `message_too_big`. With
//! `tcp.header = "es"` packets carry seed 001's ES header instead ([`super::es`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder as _, LengthDelimitedCodec};

use super::driver;
use super::es::{self, EsTransport};
use super::out_buf::OutBuf;
use super::session_io::{Inbound, Transport, poll_discard};
use super::shared_read::{Next, Parsed, SharedRead};
use super::{Admission, SessionCtx};
use crate::config::{TcpFramingConfig, TcpHeader};
use crate::protocol::client::{self, HEADER_LEN};
use crate::session::{CloseReason, ErrorCode, TransportKind};

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
    if ctx.config.tcp.header == TcpHeader::Es {
        return es::refused(ctx.config.routes.error, &body, ctx.config.tcp.little_endian);
    }
    client::encode_binary(ctx.config.routes.error, 0, &body, &mut packet);
    let mut frame = BytesMut::new();
    match codec(&ctx.config.tcp, usize::MAX).encode(packet.freeze(), &mut frame) {
        Ok(()) => frame.freeze(),
        Err(_) => Bytes::new(),
    }
}

/// Serves one accepted plain TCP client until it closes.
pub(crate) fn serve(
    ctx: Arc<SessionCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) -> impl Future<Output = ()> + Send + 'static {
    run(ctx, stream, peer, admission)
}

/// Serves one TLS client (after its handshake) until it closes.
pub(crate) fn serve_tls<S>(
    ctx: Arc<SessionCtx>,
    stream: S,
    peer: SocketAddr,
    admission: Admission,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(ctx, stream, peer, admission)
}

/// The session over `stream`, with the connection's `admission` released at its end: its
/// future, built here. Plain fns, not async fns: an async fn's future keeps its arguments in
/// every state, after they were moved on (`ctx`, the stream and the address, twice over
/// when two async fns wrapped the session: bytes of every idle TCP session;
/// docs/benchmarks.md, "Arguments held once, TCP").
fn run<S>(
    ctx: Arc<SessionCtx>,
    stream: S,
    peer: SocketAddr,
    admission: Admission,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = &ctx.config.tcp;
    if framing.header == TcpHeader::Es {
        let transport = EsTransport::new(stream, ctx.config.limits.max_msg_len, framing.little_endian);
        let session = driver::run(ctx, TransportKind::Tcp, peer, None, transport);
        return Either::Left(session.map(move |()| drop(admission)));
    }
    let max_in = ctx.config.limits.max_msg_len + HEADER_LEN;
    // No read buffer of its own while idle, and a write buffer that exists only while output
    // waits for the socket: both sized for idle sessions.
    let transport =
        TcpTransport { io: stream, reader: FrameReader::new(framing, max_in), out: OutBuf::default() };
    // A combinator, not an `async` block: awaiting a captured future moves it into a second
    // slot of the block's state (1,800 bytes against 920 in a debug build).
    Either::Right(driver::run(ctx, TransportKind::Tcp, peer, None, transport).map(move |()| drop(admission)))
}

/// Reads length-prefixed frames over the worker thread's shared read buffer ([`SharedRead`]):
/// no buffer of its own while no frame is partly received. (Frames are written through
/// tokio-util's codec, [`codec`]; its decoder needs a buffer per connection.)
pub struct FrameReader {
    read: SharedRead,
    prefix: Prefix,
}

impl FrameReader {
    /// Frames in `framing`, whose packets are at most `max` bytes.
    pub fn new(framing: &TcpFramingConfig, max: usize) -> Self {
        Self { read: SharedRead::default(), prefix: Prefix::new(framing, max) }
    }

    /// The next frame's packet (copied out of the read buffer); `Ok(None)` when the peer ended
    /// its stream between frames. Errors: a frame longer than `max` (`message_too_big`, from
    /// its prefix alone), the stream's end inside a frame or a read error (`transport_error`).
    /// Cancel-safe: bytes read stay here.
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, (CloseReason, String)>> {
        let prefix = &self.prefix;
        self.read.poll_next(io, cx, &mut |buf| prefix.parse(buf)).map(|next| match next {
            Next::Item(frame) => Ok(Some(frame)),
            Next::Eof { mid_frame: false } => Ok(None),
            Next::Eof { mid_frame: true } => {
                Err((CloseReason::TransportError, "connection closed in the middle of a frame".into()))
            }
            Next::Invalid(len) => {
                Err((CloseReason::MessageTooBig, format!("a {len}-byte frame is longer than max_msg_len")))
            }
            Next::Io(e) => Err((CloseReason::TransportError, e.to_string())),
        })
    }
}

/// The length prefix as read: `len` bytes (2 or 4, validated by the config), then that many
/// bytes of packet, at most `max`.
struct Prefix {
    len: u8,
    little_endian: bool,
    max: u32,
}

impl Prefix {
    fn new(framing: &TcpFramingConfig, max: usize) -> Self {
        let len = if framing.len_msg_len == 2 { 2 } else { 4 };
        Self { len, little_endian: framing.little_endian, max: u32::try_from(max).unwrap_or(u32::MAX) }
    }

    /// One frame's packet, copied out; `Err` with the length of a frame over `max`.
    fn parse(&self, buf: &mut [u8]) -> Result<Parsed<Bytes>, u32> {
        let n = usize::from(self.len);
        let Some(head) = buf.get(..n) else { return Ok(Parsed::Needs(n - buf.len())) };
        let len = match (head, self.little_endian) {
            ([a, b], false) => u32::from(u16::from_be_bytes([*a, *b])),
            ([a, b], true) => u32::from(u16::from_le_bytes([*a, *b])),
            ([a, b, c, d], false) => u32::from_be_bytes([*a, *b, *c, *d]),
            ([a, b, c, d], true) => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => unreachable!("the prefix is 2 or 4 bytes"),
        };
        if len > self.max {
            return Err(len);
        }
        let end = n + len as usize;
        if buf.len() < end {
            return Ok(Parsed::Needs(end - buf.len()));
        }
        Ok(Parsed::Frame(end, Some(Bytes::copy_from_slice(&buf[n..end]))))
    }

    /// The prefix of a `len`-byte packet, written before it: the first 2 or 4 bytes of the
    /// array. Outbound packets may be larger than what clients may send (`max`): they are
    /// bounded by the prefix alone. Errors (`InvalidInput`): the prefix cannot count `len`.
    fn encode(&self, len: usize) -> std::io::Result<([u8; 4], usize)> {
        let too_long = || {
            let message = format!("a {len}-byte packet does not fit a {}-byte length prefix", self.len);
            std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
        };
        let mut head = [0; 4];
        if self.len == 2 {
            let len = u16::try_from(len).map_err(|_| too_long())?;
            head[..2].copy_from_slice(&if self.little_endian {
                len.to_le_bytes()
            } else {
                len.to_be_bytes()
            });
        } else {
            let len = u32::try_from(len).map_err(|_| too_long())?;
            head = if self.little_endian { len.to_le_bytes() } else { len.to_be_bytes() };
        }
        Ok((head, usize::from(self.len)))
    }
}

/// A session's TCP (or TLS) connection, both directions: frames are read over the worker's
/// shared buffer ([`SharedRead`]) and written to the same stream from [`OutBuf`].
struct TcpTransport<S> {
    io: S,
    /// Reads frames; its prefix also writes them ([`Prefix::encode`]).
    reader: FrameReader,
    out: OutBuf,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for TcpTransport<S> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        self.reader.poll_frame(&mut self.io, cx).map(|next| match next {
            Ok(Some(frame)) => match client::decode_binary(frame) {
                Ok(packet) => Inbound::Packet(packet),
                Err(e) => Inbound::Failed(CloseReason::MalformedFrame, e.to_string()),
            },
            Ok(None) => Inbound::Closed,
            Err((reason, message)) => {
                tracing::debug!("tcp read failed: {message}");
                Inbound::Failed(reason, message)
            }
        })
    }

    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
        // The prefix first: a packet it cannot count takes no buffer.
        let (head, n) = self.reader.prefix.encode(HEADER_LEN + body.len())?;
        let buf = self.out.buf_mut();
        buf.put_slice(&head[..n]);
        client::encode_binary(msg_id, seq, body, buf);
        Ok(())
    }

    fn put_shared(&mut self, packet: &client::SharedPacket) -> std::io::Result<()> {
        let frame = packet.binary();
        let (head, n) = self.reader.prefix.encode(frame.len())?;
        let buf = self.out.buf_mut();
        buf.reserve(n + frame.len());
        buf.put_slice(&head[..n]);
        buf.put_slice(frame);
        Ok(())
    }

    fn put_close(&mut self, _reason: CloseReason, _message: &str) {
        // TCP has no close frame: the error frame queued before the close told the client why.
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.out.poll_write_to(&mut self.io, cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        poll_discard(&mut self.io, cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn transport(io: tokio::io::DuplexStream) -> TcpTransport<tokio::io::DuplexStream> {
        TcpTransport {
            io,
            reader: FrameReader::new(&TcpFramingConfig::default(), 1 << 20),
            out: OutBuf::default(),
        }
    }

    /// Frames that arrive together, split, and large are read whole, and once the last is
    /// read the transport holds no read buffer (docs/architecture.md, "An idle session in
    /// memory").
    #[tokio::test]
    async fn a_reader_holds_no_buffer_between_frames() {
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
        assert!(reader.reader.read.holds_memory(), "the third frame's beginning");
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &frames[split..]).await.expect("write");
        let Inbound::Packet(small) = poll_fn(|cx| reader.poll_next(cx)).await else {
            panic!("the small packet")
        };
        assert_eq!((small.msg_id, &small.body[..]), (601, &b"small"[..]));
        assert!(!reader.reader.read.holds_memory(), "a read buffer kept between frames");
    }

    /// What the transport writes is what tokio-util's codec reads, in every framing; a packet
    /// its prefix cannot count is refused and nothing of it is written.
    #[tokio::test]
    async fn written_frames_decode_in_every_framing() {
        use tokio_util::codec::Decoder as _;
        for (len_msg_len, little_endian) in [(2, false), (2, true), (4, false), (4, true)] {
            let framing = TcpFramingConfig { len_msg_len, little_endian, ..TcpFramingConfig::default() };
            let (ours, mut theirs) = tokio::io::duplex(1 << 20);
            let mut writer = TcpTransport {
                io: ours,
                reader: FrameReader::new(&framing, 1 << 20),
                out: OutBuf::default(),
            };
            writer.put(600, 3, b"hello").expect("put");
            let shared = client::SharedPacket::new(601, 0, Bytes::from_static(b"to all"));
            writer.put_shared(&shared).expect("put_shared");
            poll_fn(|cx| writer.poll_write_out(cx)).await.expect("written");
            let mut got = BytesMut::new();
            while got.len() < 2 * (len_msg_len + HEADER_LEN) + 11 {
                tokio::io::AsyncReadExt::read_buf(&mut theirs, &mut got).await.expect("read");
            }
            let mut codec = codec(&framing, 1 << 20);
            let first = client::decode_binary(codec.decode(&mut got).unwrap().unwrap().freeze()).unwrap();
            let second = client::decode_binary(codec.decode(&mut got).unwrap().unwrap().freeze()).unwrap();
            assert_eq!((first.msg_id, first.seq, &first.body[..]), (600, 3, &b"hello"[..]));
            assert_eq!((second.msg_id, &second.body[..]), (601, &b"to all"[..]));
            if len_msg_len == 2 {
                let refused = writer.put(602, 0, &vec![0u8; 1 << 16]).expect_err("over a 2-byte prefix");
                assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
                assert_eq!(writer.buffered(), 0, "nothing written for the refused packet");
            }
        }
    }

    /// A frame over the limit is refused at its prefix, before its bytes arrive.
    #[tokio::test]
    async fn an_oversized_frame_is_refused_at_its_prefix() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 10);
        let mut reader = transport(ours);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &(2u32 << 20).to_be_bytes()).await.expect("write");
        let next = poll_fn(|cx| reader.poll_next(cx)).await;
        assert!(matches!(next, Inbound::Failed(CloseReason::MessageTooBig, _)));
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
        assert!(
            capacity <= super::super::out_buf::MAX_KEPT,
            "a {capacity}-byte buffer kept for a small frame"
        );
        poll_fn(|cx| writer.poll_write_out(cx)).await.expect("written");
        let mut got = vec![0u8; 2 * (4 + HEADER_LEN) + (64 << 10) + 5];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got).await.expect("both frames arrived whole");
        assert_eq!(&got[got.len() - 5..], b"small");
    }
}
