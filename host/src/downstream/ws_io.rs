//! What the gateway writes to a WebSocket client: its own frames, built here (RFC 6455 section
//! 5.2), and the answers to the client's control frames ([`pong`], [`close_reply`]).
//!
//! Why not tungstenite's writer: its out buffer keeps the capacity of the largest message
//! ever sent for the life of the connection (1,000 sessions that each got one 64 KiB push kept
//! ~64 MiB, docs/benchmarks.md "Memory return"). [`Frames`] holds a buffer only while output
//! waits for the socket ([`OutBuf`]). Reading is [`ws_read`](super::ws_read)'s.

use std::io;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::out_buf::OutBuf;

/// RFC 6455 section 5.2 opcodes the gateway sends.
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xa;

/// The pong answering a ping that carried `payload` (section 5.5.2; at most 125 bytes).
pub(crate) fn pong(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + payload.len());
    put_header(&mut buf, OP_PONG, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// The close frame answering the client's (section 5.5.1): its status code echoed, or empty
/// if it had none.
pub(crate) fn close_reply(code: Option<u16>) -> Bytes {
    let mut buf = BytesMut::with_capacity(4);
    match code {
        Some(code) => {
            put_header(&mut buf, OP_CLOSE, 2);
            buf.put_u16(code);
        }
        None => put_header(&mut buf, OP_CLOSE, 0),
    }
    buf.freeze()
}

/// Server-to-client frames (RFC 6455 section 5.2: unmasked, FIN set, one frame per message)
/// waiting for the socket. Nothing is buffered after a close frame.
#[derive(Default)]
pub(crate) struct Frames {
    out: OutBuf,
    /// A close frame was buffered: nothing may follow it (section 5.5.1).
    closed: bool,
}

impl Frames {
    /// Bytes buffered and not yet written.
    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }

    /// Buffers one message of `opcode` whose payload is `parts` concatenated (`len` bytes).
    pub(crate) fn message(&mut self, opcode: u8, len: usize, parts: &[&[u8]]) {
        if self.closed {
            return;
        }
        let buf = self.out.buf_mut();
        buf.reserve(10 + len);
        put_header(buf, opcode, len);
        for part in parts {
            buf.put_slice(part);
        }
    }

    /// Buffers control frames built whole ([`pong`], [`close_reply`]) as they are.
    pub(crate) fn control(&mut self, frames: &[u8]) {
        if self.closed {
            return;
        }
        self.closed = has_close(frames);
        self.out.buf_mut().put_slice(frames);
    }

    /// Buffers a close frame (section 5.5.1): `code`, then `reason` (at most 123 bytes).
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason.as_bytes()[..end];
        let buf = self.out.buf_mut();
        put_header(buf, OP_CLOSE, 2 + reason.len());
        buf.put_u16(code);
        buf.put_slice(reason);
    }

    /// Writes what is buffered to `io` ([`OutBuf::poll_write_to`]).
    pub(crate) fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.out.poll_write_to(io, cx)
    }

    /// Writes what is buffered to `io` and flushes it.
    pub(crate) async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_to(io, cx)).await
    }
}

/// Section 5.2: FIN + opcode, then the payload length in 7, 7+16 or 7+64 bits, no mask.
fn put_header(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    match len {
        0..=125 => buf.put_u8(len as u8),
        126..=0xffff => {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
    }
}

/// Whether the unmasked frames in `bytes` include a close frame.
fn has_close(mut bytes: &[u8]) -> bool {
    while let [first, second, rest @ ..] = bytes {
        if first & 0x0f == OP_CLOSE {
            return true;
        }
        let (len, rest) = match second & 0x7f {
            126 if rest.len() >= 2 => (u16::from_be_bytes([rest[0], rest[1]]) as usize, &rest[2..]),
            127 if rest.len() >= 8 => {
                let mut n = [0; 8];
                n.copy_from_slice(&rest[..8]);
                (usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX), &rest[8..])
            }
            126 | 127 => return false,
            n => (n as usize, rest),
        };
        bytes = rest.get(len..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u8, len: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_header(&mut buf, opcode, len);
        buf.to_vec()
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(header(OP_BINARY, 125), [0x82, 125]);
        assert_eq!(header(OP_TEXT, 126), [0x81, 126, 0, 126]);
        assert_eq!(header(OP_BINARY, 65_535), [0x82, 126, 0xff, 0xff]);
        assert_eq!(header(OP_BINARY, 65_536), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_close_is_found_after_other_frames() {
        let pong = [0x8a, 2, b'h', b'i'];
        let close = [0x88, 2, 0x03, 0xe8];
        assert!(!has_close(&pong));
        assert!(has_close(&[&pong[..], &close[..]].concat()));
        assert!(has_close(&close));
        assert!(!has_close(&[0x8a]));
    }
}
