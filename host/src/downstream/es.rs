//! TCP clients framing packets with seed 001's 28-byte ES header (`tcp.header = "es"`;
//! [`crate::protocol::es`] has the layout). The session is the same as a standard TCP
//! client's: only how packets are cut from the stream and written to it differs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::out_buf::OutBuf;
use super::session_io::{Inbound, Transport, poll_discard};
use super::shared_read::{Next, Parsed, SharedRead};
use crate::protocol::client::SharedPacket;
use crate::protocol::es::{self, ES_HEADER_LEN, Sender};
use crate::session::{CloseReason, SessionHandle};

/// Why a packet's `pack_len` is refused.
enum BadLen {
    /// Shorter than the header itself: the stream is not ES packets.
    BelowHeader(u16),
    /// Longer than the header plus `limits.max_msg_len`.
    OverLimit(u16),
}

/// One ES client's connection, both directions.
pub(super) struct EsTransport<S> {
    io: S,
    read: SharedRead,
    /// Largest `pack_len` accepted (header included); 4 bytes, as `pack_len` is 2.
    max: u32,
    little_endian: bool,
    /// The `es_id` of the last packet received, echoed in what is sent.
    es_id: u32,
    /// The session whose id and user id go into each header (set before the first read).
    session: Option<SessionHandle>,
    out: OutBuf,
}

impl<S> EsTransport<S> {
    /// A transport over `io` whose packet bodies are at most `max_body` bytes (and at most
    /// what `pack_len` can count).
    pub(super) fn new(io: S, max_body: usize, little_endian: bool) -> Self {
        let max = u32::try_from(ES_HEADER_LEN + max_body.min(es::MAX_ES_BODY)).unwrap_or(u32::MAX);
        Self {
            io,
            read: SharedRead::default(),
            max,
            little_endian,
            es_id: 0,
            session: None,
            out: OutBuf::default(),
        }
    }

    fn sender(&self) -> Sender {
        let session = self.session.as_ref();
        Sender {
            user_id: session.and_then(|s| s.user_id()).and_then(|u| u.parse().ok()).unwrap_or(0),
            es_id: self.es_id,
            session: session.map_or(0, |s| s.id()),
        }
    }
}

/// One whole packet at the start of `buf` (copied out), by its `pack_len`.
fn parse(buf: &mut [u8], max: usize, little_endian: bool) -> Result<Parsed<Bytes>, BadLen> {
    let Some(&[a, b]) = buf.get(..2) else { return Ok(Parsed::Needs(2 - buf.len())) };
    let len = es::pack_len([a, b], little_endian);
    if usize::from(len) < ES_HEADER_LEN {
        return Err(BadLen::BelowHeader(len));
    }
    if usize::from(len) > max {
        return Err(BadLen::OverLimit(len));
    }
    let len = usize::from(len);
    if buf.len() < len {
        return Ok(Parsed::Needs(len - buf.len()));
    }
    Ok(Parsed::Frame(len, Some(Bytes::copy_from_slice(&buf[..len]))))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for EsTransport<S> {
    fn attach(&mut self, session: &SessionHandle) {
        self.session = Some(session.clone());
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        let (max, little) = (self.max as usize, self.little_endian);
        self.read.poll_next(&mut self.io, cx, &mut |buf| parse(buf, max, little)).map(|next| match next {
            Next::Item(frame) => {
                let packet = es::decode(frame, little);
                self.es_id = packet.es_id.unwrap_or(0);
                Inbound::Packet(packet)
            }
            Next::Eof { mid_frame: false } => Inbound::Closed,
            Next::Eof { mid_frame: true } => Inbound::Failed(
                CloseReason::TransportError,
                "connection closed in the middle of a packet".into(),
            ),
            Next::Invalid(BadLen::BelowHeader(len)) => Inbound::Failed(
                CloseReason::MalformedFrame,
                format!("pack_len {len} is shorter than the {ES_HEADER_LEN}-byte ES header"),
            ),
            Next::Invalid(BadLen::OverLimit(len)) => Inbound::Failed(
                CloseReason::MessageTooBig,
                format!("a {len}-byte packet is longer than max_msg_len"),
            ),
            Next::Io(e) => Inbound::Failed(CloseReason::TransportError, e.to_string()),
        })
    }

    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> io::Result<()> {
        let from = self.sender();
        es::encode(msg_id, seq, body, from, self.little_endian, self.out.buf_mut()).map_err(io::Error::other)
    }

    fn put_shared(&mut self, packet: &SharedPacket) -> io::Result<()> {
        // The header names this session, so a fan-out packet is encoded per member.
        self.put(packet.msg_id, packet.seq, &packet.body)
    }

    fn put_close(&mut self, _reason: CloseReason, _message: &str) {
        // No close frame: the error frame queued before the close told the client why.
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_write_to(&mut self.io, cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_discard(&mut self.io, cx)
    }
}

/// The frame an ES listener writes to a connection refused at accept: `body` as an ES packet
/// of message `msg_id` naming no session.
pub(super) fn refused(msg_id: u32, body: &[u8], little_endian: bool) -> Bytes {
    let mut out = BytesMut::new();
    match es::encode(msg_id, 0, body, Sender::default(), little_endian, &mut out) {
        Ok(()) => out.freeze(),
        Err(_) => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test]
    async fn packets_are_cut_by_pack_len_and_bad_lengths_close() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut transport = EsTransport::new(ours, 1024, true);
        let mut wire = BytesMut::new();
        let from = Sender { user_id: 0, es_id: 11, session: 0 };
        es::encode(100, 1, b"one", from, true, &mut wire).unwrap();
        es::encode(101, 2, &[9; 300], from, true, &mut wire).unwrap();
        // Arrives in three pieces.
        for piece in [&wire[..5], &wire[5..40], &wire[40..]] {
            tokio::io::AsyncWriteExt::write_all(&mut theirs, piece).await.unwrap();
        }
        for (msg_id, seq, len) in [(100, 1, 3), (101, 2, 300)] {
            let Inbound::Packet(p) = poll_fn(|cx| transport.poll_next(cx)).await else { panic!("a packet") };
            assert_eq!((p.msg_id, p.seq, p.body.len(), p.es_id), (msg_id, seq, len, Some(11)));
        }
        assert_eq!(transport.es_id, 11, "echoed in what is sent");
        // pack_len below the header, then one over the limit.
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &10u16.to_le_bytes()).await.unwrap();
        let next = poll_fn(|cx| transport.poll_next(cx)).await;
        assert!(matches!(next, Inbound::Failed(CloseReason::MalformedFrame, _)));
        let (ours, mut theirs) = tokio::io::duplex(1 << 10);
        let mut transport = EsTransport::new(ours, 1024, true);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &2000u16.to_le_bytes()).await.unwrap();
        let next = poll_fn(|cx| transport.poll_next(cx)).await;
        assert!(matches!(next, Inbound::Failed(CloseReason::MessageTooBig, _)));
    }
}
