//! Reading a client's WebSocket frames (RFC 6455 section 5) without a read buffer per
//! connection ([`SharedRead`]).
//!
//! tungstenite parses the frame header ([`FrameHeader::parse`]) and judges close codes
//! ([`CloseCode::is_allowed`]); the rest of section 5 is checked here: client frames masked
//! (5.1), no reserved bits (5.2, no extension is negotiated), control frames final and at most
//! 125 bytes (5.5), fragments in order (5.4), text valid UTF-8 (5.6, judged frame by frame as
//! fragments arrive), a close frame's code and reason (5.5.1, 7.4).

use std::io::Cursor;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::shared_read::{Next, Parsed, SharedRead};
use crate::session::CloseReason;

/// What the client sent, one frame or one whole message at a time (pongs, which need nothing
/// (section 5.5.3), and fragments before the last are not returned).
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete text message (checked UTF-8), fragments joined.
    Text(Text),
    /// A complete binary message, fragments joined.
    Binary(Bytes),
    /// A ping's payload, to be answered with a pong carrying it (section 5.5.2).
    Ping(Bytes),
    /// A close frame's status code, if it had one (section 5.5.1).
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
}

/// A text message's payload, which the reader checked to be UTF-8 (section 5.6), so that its
/// users need not check it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Text(Bytes);

impl Text {
    /// Text made of `data`; the caller has checked that it is UTF-8 (only this module builds
    /// one, after `std::str::from_utf8` or `Partial::check_utf8` accepted every byte).
    fn checked(data: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&data).is_ok());
        Self(data)
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: a `Text` is built only by `checked`, from bytes found to be UTF-8, and its
        // bytes are never changed afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The payload's bytes (the same `Bytes`, not a copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Why reading stopped: the close reason (and so the close code) and a message for the client.
pub type ReadError = (CloseReason, String);

fn protocol(message: &str) -> ReadError {
    (CloseReason::TransportError, message.to_string())
}

fn invalid_utf8() -> ReadError {
    (CloseReason::InvalidUtf8, "text is not valid UTF-8".to_string())
}

/// A message whose first frames arrived and whose final frame has not.
struct Partial {
    text: bool,
    data: BytesMut,
    /// How many bytes of `data` are known to be valid UTF-8 (text).
    valid: usize,
}

impl Partial {
    /// Checks what arrived since the last check: fails on an invalid sequence, lets an
    /// incomplete one at the end wait for the next fragment unless `last`.
    fn check_utf8(&mut self, last: bool) -> Result<(), ReadError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            Err(e) if e.error_len().is_none() && !last => self.valid += e.valid_up_to(),
            Err(_) => return Err(invalid_utf8()),
        }
        Ok(())
    }
}

/// One connection's reading state: what is left of the last read, and the message being
/// reassembled from fragments. Empty while the connection is idle (no heap memory).
pub struct FrameReader {
    read: SharedRead,
    parser: Parser,
}

impl FrameReader {
    /// `max` is the largest payload taken, in bytes (`max_msg_len` plus the packet header).
    pub fn new(max: usize) -> Self {
        Self { read: SharedRead::default(), parser: Parser { partial: None, max } }
    }

    /// The next frame worth a caller's attention. Errors carry the close reason (1002, 1007 or
    /// 1009, protocol.md "Conformance") and a message. Cancel-safe: bytes read stay here.
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Frame, ReadError>> {
        let parser = &mut self.parser;
        Poll::Ready(match ready!(self.read.poll_next(io, cx, &mut |buf| parser.parse(buf))) {
            Next::Item(frame) => Ok(frame),
            Next::Eof { mid_frame: false } if parser.partial.is_none() => Ok(Frame::Eof),
            Next::Eof { .. } => Err(protocol("connection closed in the middle of a message")),
            Next::Invalid(e) => Err(e),
            Next::Io(e) => Err(protocol(&e.to_string())),
        })
    }
}

/// The frame format and the message being reassembled.
struct Parser {
    partial: Option<Box<Partial>>,
    /// The largest message (and frame) payload taken, in bytes; longer is a 1009 close.
    max: usize,
}

impl Parser {
    /// Parses the frame at the start of `buf`, unmasking its payload in place.
    fn parse(&mut self, buf: &mut [u8]) -> Result<Parsed<Frame>, ReadError> {
        let mut cursor = Cursor::new(&*buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Parsed::Needs(14 - buf.len().min(14))),
            Err(e) => return Err(protocol(&e.to_string())),
        };
        let start = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(protocol("reserved bits set (no extension was negotiated)"));
        }
        let Some(mask) = header.mask else {
            return Err(protocol("client frames must be masked (RFC 6455 section 5.1)"));
        };
        let control = matches!(header.opcode, OpCode::Control(_));
        if control && (!header.is_final || len > 125) {
            return Err(protocol("control frames must be final and at most 125 bytes"));
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
        if !control && len.saturating_add(so_far as u64) > self.max as u64 {
            return Err((CloseReason::MessageTooBig, format!("message over {} bytes", self.max)));
        }
        match (header.opcode, &self.partial) {
            (OpCode::Data(Data::Continue), None) => {
                return Err(protocol("continuation frame with no message"));
            }
            (OpCode::Data(Data::Text | Data::Binary), Some(_)) => {
                return Err(protocol("new message before the last one's final frame"));
            }
            _ => {}
        }
        let end = start + len as usize;
        if buf.len() < end {
            return Ok(Parsed::Needs(end - buf.len()));
        }
        let payload = &mut buf[start..end];
        unmask(payload, mask);
        let frame = match header.opcode {
            OpCode::Control(Control::Ping) => Some(Frame::Ping(Bytes::copy_from_slice(payload))),
            OpCode::Control(Control::Pong) => None,
            OpCode::Control(_) => Some(Frame::Close(close_code(payload)?)),
            OpCode::Data(data) => self.data(data, header.is_final, payload)?,
        };
        Ok(Parsed::Frame(end, frame))
    }

    /// A data frame: a whole message, or a fragment of one.
    fn data(&mut self, data: Data, last: bool, payload: &[u8]) -> Result<Option<Frame>, ReadError> {
        let mut partial = match (data, self.partial.take()) {
            (Data::Continue, Some(mut partial)) => {
                partial.data.extend_from_slice(payload);
                partial
            }
            (data, _) => {
                let text = matches!(data, Data::Text);
                if last {
                    if text && std::str::from_utf8(payload).is_err() {
                        return Err(invalid_utf8());
                    }
                    let data = Bytes::copy_from_slice(payload);
                    return Ok(Some(if text {
                        Frame::Text(Text::checked(data))
                    } else {
                        Frame::Binary(data)
                    }));
                }
                Box::new(Partial { text, data: BytesMut::from(payload), valid: 0 })
            }
        };
        partial.check_utf8(last)?;
        if last {
            let data = partial.data.freeze();
            return Ok(Some(if partial.text {
                Frame::Text(Text::checked(data))
            } else {
                Frame::Binary(data)
            }));
        }
        self.partial = Some(partial);
        Ok(None)
    }
}

/// A close frame's payload (section 5.5.1): empty, or a code (section 7.4) and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("a close frame's payload is empty or at least 2 bytes")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(protocol("close code not allowed on the wire (RFC 6455 section 7.4)"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(invalid_utf8());
            }
            Ok(Some(code))
        }
    }
}

/// Section 5.3: payload byte i is XORed with mask byte i mod 4.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests;
