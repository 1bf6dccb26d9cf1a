//! The reader against frames built by hand (RFC 6455 section 5.7's examples and the failures
//! section 5 names); Autobahn's suite covers it end to end (`.ci/autobahn.sh`).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// A client frame: `first` byte (FIN, opcode), masked with a fixed key.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Hands out its bytes `step` at a time, then end of stream.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let end = (self.at + self.step).min(self.bytes.len()).min(self.at + buf.remaining());
        buf.put_slice(&self.bytes[self.at..end]);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

/// Every frame `reader` returns from `bytes` handed out `step` at a time, up to the end or
/// the first error.
async fn read_all(reader: &mut FrameReader, bytes: Vec<u8>, step: usize) -> Vec<Result<Frame, ReadError>> {
    let mut io = Trickle { bytes, at: 0, step };
    let mut frames = Vec::new();
    loop {
        let next = poll_fn(|cx| reader.poll_frame(&mut io, cx)).await;
        let end = matches!(next, Ok(Frame::Eof) | Err(_));
        frames.push(next);
        if end {
            return frames;
        }
    }
}

fn text(s: &str) -> Result<Frame, ReadError> {
    Ok(Frame::Text(Text::checked(Bytes::copy_from_slice(s.as_bytes()))))
}

#[tokio::test]
async fn frames_are_read_whole_whatever_the_reads_bring() {
    let mut bytes = frame(0x81, b"Hello");
    bytes.extend(frame(0x82, &[7; 300]));
    bytes.extend(frame(0x89, b"ping"));
    bytes.extend(frame(0x8a, b"pong")); // not returned
    bytes.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
    for step in [1, 2, 3, 7, 64, 100_000] {
        let mut reader = FrameReader::new(1000);
        let frames = read_all(&mut reader, bytes.clone(), step).await;
        assert_eq!(
            frames,
            [
                text("Hello"),
                Ok(Frame::Binary(Bytes::from(vec![7; 300]))),
                Ok(Frame::Ping(Bytes::from_static(b"ping"))),
                Ok(Frame::Close(Some(1000))),
                Ok(Frame::Eof),
            ],
            "{step} bytes per read"
        );
        assert!(!reader.read.holds_memory(), "nothing held once every frame is read");
    }
}

#[tokio::test]
async fn fragments_join_across_a_ping_and_a_split_character() {
    // "hé!" with 'é' (0xc3 0xa9) split between two fragments, a ping between them.
    let mut bytes = frame(0x01, b"h\xc3");
    bytes.extend(frame(0x89, b""));
    bytes.extend(frame(0x00, b"\xa9"));
    bytes.extend(frame(0x80, b"!"));
    let mut reader = FrameReader::new(1000);
    let frames = read_all(&mut reader, bytes, 5).await;
    assert_eq!(frames, [Ok(Frame::Ping(Bytes::new())), text("hé!"), Ok(Frame::Eof)]);
    assert!(reader.parser.partial.is_none());
}

/// The error each bad input ends with.
async fn error_of(bytes: Vec<u8>) -> (CloseReason, String) {
    let mut reader = FrameReader::new(1000);
    match read_all(&mut reader, bytes, 100_000).await.pop() {
        Some(Err(e)) => e,
        other => panic!("no error: {other:?}"),
    }
}

#[tokio::test]
async fn each_violation_of_section_5_fails_with_its_close_reason() {
    let unmasked = vec![0x81, 2, b'h', b'i'];
    let cases: Vec<(&str, Vec<u8>, CloseReason)> = vec![
        ("unmasked", unmasked, CloseReason::TransportError),
        ("reserved bit", frame(0xc1, b"x"), CloseReason::TransportError),
        ("reserved opcode", frame(0x83, b""), CloseReason::TransportError),
        ("fragmented ping", frame(0x09, b""), CloseReason::TransportError),
        ("long ping", frame(0x89, &[0; 126]), CloseReason::TransportError),
        ("lone continuation", frame(0x80, b"x"), CloseReason::TransportError),
        (
            "message inside a message",
            [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
            CloseReason::TransportError,
        ),
        ("invalid text", frame(0x81, b"\xff"), CloseReason::InvalidUtf8),
        (
            "invalid fragment",
            [frame(0x01, b"a"), frame(0x00, b"\xc3\x28")].concat(),
            CloseReason::InvalidUtf8,
        ),
        (
            "text ends mid-character",
            [frame(0x01, b"a"), frame(0x80, b"\xc3")].concat(),
            CloseReason::InvalidUtf8,
        ),
        ("close with one byte", frame(0x88, b"\x03"), CloseReason::TransportError),
        ("close code 1005", frame(0x88, &1005u16.to_be_bytes()), CloseReason::TransportError),
        ("close code 999", frame(0x88, &999u16.to_be_bytes()), CloseReason::TransportError),
        ("close reason not UTF-8", frame(0x88, b"\x03\xe8\xff"), CloseReason::InvalidUtf8),
        ("ends mid-frame", frame(0x81, b"hello")[..5].to_vec(), CloseReason::TransportError),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(error_of(bytes).await.0, want, "{name}");
    }
}

#[tokio::test]
async fn an_oversized_message_fails_at_its_header() {
    // Only the header of a 2,000-byte frame arrives: refused without waiting for the payload.
    let header = frame(0x82, &[0; 2000])[..8].to_vec();
    assert_eq!(error_of(header).await.0, CloseReason::MessageTooBig);
    // Fragments that together pass the limit.
    let bytes = [frame(0x02, &[0; 600]), frame(0x80, &[0; 600])].concat();
    assert_eq!(error_of(bytes).await.0, CloseReason::MessageTooBig);
}

#[test]
fn unmasking_matches_section_5_7() {
    // Section 5.7: a masked "Hello".
    let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
    unmask(&mut payload, [0x37, 0xfa, 0x21, 0x3d]);
    assert_eq!(&payload, b"Hello");
}
