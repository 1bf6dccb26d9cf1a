//! Client packets: what a game client sends and receives (docs/protocol.md).
//!
//! Binary form (WebSocket binary frames; TCP after the length prefix), big-endian:
//!
//! ```text
//! 0        4        8
//! +--------+--------+----------------+
//! | msg_id |  seq   | body ...       |
//! |  u32   |  u32   | (rest of frame)|
//! +--------+--------+----------------+
//! ```
//!
//! JSON form (WebSocket text frames): `{"id": <u32>, "seq": <u32>, "data": <any JSON>}`. The
//! body is `data`: a JSON string's contents as UTF-8, any other value as its JSON text. The
//! gateway answers text with text: a body that is valid JSON goes out as `data`, other UTF-8
//! as a JSON string, and non-UTF-8 bytes as base64 in `data_b64`.

use std::sync::OnceLock;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::gopush;

/// Bytes of the binary packet header (msg_id + seq).
pub const HEADER_LEN: usize = 8;

/// One client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub msg_id: u32,
    pub seq: u32,
    pub body: Bytes,
    /// The ES id of a packet that came with seed 001's ES header ([`super::es`]); `None` for
    /// every other framing.
    pub es_id: Option<u32>,
}

/// Why a client frame could not be decoded. The gateway closes the connection (WebSocket
/// 1002 for binary, 1007 for text; see [`crate::session::CloseReason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("binary frame of {0} bytes is shorter than the {HEADER_LEN}-byte packet header")]
    TooShort(usize),
    #[error("text frame is not a packet: {0}")]
    BadJson(String),
}

/// Decodes a binary packet (header + body). `frame` is consumed without copying the body.
pub fn decode_binary(mut frame: Bytes) -> Result<Packet, DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let msg_id = frame.get_u32();
    let seq = frame.get_u32();
    Ok(Packet { msg_id, seq, body: frame, es_id: None })
}

/// The binary packet header: `msg_id` then `seq`, both u32 big-endian.
pub fn binary_header(msg_id: u32, seq: u32) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..4].copy_from_slice(&msg_id.to_be_bytes());
    header[4..].copy_from_slice(&seq.to_be_bytes());
    header
}

/// Appends the binary form of a packet to `dst`.
pub fn encode_binary(msg_id: u32, seq: u32, body: &[u8], dst: &mut BytesMut) {
    dst.reserve(HEADER_LEN + body.len());
    dst.put_slice(&binary_header(msg_id, seq));
    dst.put_slice(body);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonIn<'a> {
    id: u32,
    #[serde(default)]
    seq: u32,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    id: u32,
    seq: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
}

/// Decodes a JSON text packet.
pub fn decode_json(text: &str) -> Result<Packet, DecodeError> {
    let packet: JsonIn<'_> = serde_json::from_str(text).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    let body = data_body(packet.data).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    Ok(Packet { msg_id: packet.id, seq: packet.seq, body, es_id: None })
}

/// A JSON `data` value as a packet body: a string's contents as UTF-8, any other value as its
/// JSON text, nothing as an empty body. The same rule serves client packets, room requests
/// and the push API.
pub fn data_body(data: Option<&RawValue>) -> Result<Bytes, serde_json::Error> {
    Ok(match data {
        None => Bytes::new(),
        Some(raw) if raw.get().starts_with('"') => Bytes::from(serde_json::from_str::<String>(raw.get())?),
        Some(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
    })
}

/// Encodes a packet as JSON text (see the module docs for how the body is represented).
pub fn encode_json(msg_id: u32, seq: u32, body: &[u8]) -> String {
    let mut out = JsonOut { id: msg_id, seq, data: None, data_b64: None };
    let quoted;
    match std::str::from_utf8(body) {
        Ok("") => {}
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => out.data = Some(raw),
            Err(_) => {
                quoted = serde_json::value::to_raw_value(text).ok();
                out.data = quoted.as_deref();
            }
        },
        Err(_) => out.data_b64 = Some(base64::engine::general_purpose::STANDARD.encode(body)),
    }
    // Serialising these types cannot fail: every field is a number, a valid raw JSON value or
    // a string.
    serde_json::to_string(&out).unwrap_or_default()
}

/// A packet sent to many sessions (fan-out). Each wire encoding (binary, JSON text, go-push
/// JSON) is built once, by the first writer that needs it, and then shared by every other
/// writer as a reference-counted buffer: a broadcast to 10,000 members encodes at most three
/// times, not 10,000.
#[derive(Debug)]
pub struct SharedPacket {
    pub msg_id: u32,
    pub seq: u32,
    pub body: Bytes,
    binary: OnceLock<Bytes>,
    json: OnceLock<Utf8Bytes>,
    gopush: OnceLock<Utf8Bytes>,
}

impl SharedPacket {
    pub fn new(msg_id: u32, seq: u32, body: Bytes) -> Self {
        Self { msg_id, seq, body, binary: OnceLock::new(), json: OnceLock::new(), gopush: OnceLock::new() }
    }

    /// Header + body ([`encode_binary`]).
    pub fn binary(&self) -> &Bytes {
        self.binary.get_or_init(|| {
            let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body.len());
            encode_binary(self.msg_id, self.seq, &self.body, &mut buf);
            buf.freeze()
        })
    }

    /// The JSON text form ([`encode_json`]).
    pub fn json(&self) -> &Utf8Bytes {
        self.json.get_or_init(|| encode_json(self.msg_id, self.seq, &self.body).into())
    }

    /// The go-push form ([`gopush::encode`]).
    pub fn gopush(&self, ids: &gopush::Ids) -> &Utf8Bytes {
        self.gopush.get_or_init(|| gopush::encode(ids, self.msg_id, &self.body).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip() {
        let mut buf = BytesMut::new();
        encode_binary(100, 7, b"hello", &mut buf);
        assert_eq!(&buf[..8], &[0, 0, 0, 100, 0, 0, 0, 7]);
        let p = decode_binary(buf.freeze()).unwrap();
        assert_eq!(p, Packet { msg_id: 100, seq: 7, body: Bytes::from_static(b"hello"), es_id: None });
    }

    #[test]
    fn short_binary_frame_is_rejected() {
        assert_eq!(decode_binary(Bytes::from_static(&[0, 1, 2])), Err(DecodeError::TooShort(3)));
    }

    #[test]
    fn json_string_data_is_unquoted_and_objects_kept() {
        let p = decode_json(r#"{"id":1,"seq":2,"data":"tok\"en"}"#).unwrap();
        assert_eq!(&p.body[..], b"tok\"en");
        let p = decode_json(r#"{"id":100,"seq":3,"data":{"a":[1,2]}}"#).unwrap();
        assert_eq!(&p.body[..], br#"{"a":[1,2]}"#);
        let p = decode_json(r#"{"id":2}"#).unwrap();
        assert!(p.body.is_empty());
        assert!(decode_json(r#"{"seq":1}"#).is_err());
        assert!(decode_json("not json").is_err());
    }

    #[test]
    fn json_out_picks_the_body_representation() {
        assert_eq!(encode_json(4, 1, br#"{"x":1}"#), r#"{"id":4,"seq":1,"data":{"x":1}}"#);
        assert_eq!(encode_json(5, 0, b"plain text"), r#"{"id":5,"seq":0,"data":"plain text"}"#);
        assert_eq!(encode_json(6, 0, &[0xff, 0]), r#"{"id":6,"seq":0,"data_b64":"/wA="}"#);
        assert_eq!(encode_json(7, 0, b""), r#"{"id":7,"seq":0}"#);
    }

    #[test]
    fn shared_packet_encodes_like_the_unshared_functions() {
        let p = SharedPacket::new(7, 0, Bytes::from_static(br#"{"x":1}"#));
        let mut buf = BytesMut::new();
        encode_binary(7, 0, br#"{"x":1}"#, &mut buf);
        assert_eq!(p.binary(), &buf.freeze());
        assert_eq!(p.json().as_str(), encode_json(7, 0, br#"{"x":1}"#));
        // Built once: the same buffer comes back.
        assert_eq!(p.binary().as_ptr(), p.binary().as_ptr());
    }
}
