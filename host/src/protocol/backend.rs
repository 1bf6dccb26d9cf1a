//! Backend protocol v1: frames between the gateway and backend services over the queue-pool
//! TCP connections (docs/protocol.md has the byte layouts).
//!
//! Every frame is a u32 big-endian length followed by that many bytes (tokio-util's
//! `LengthDelimitedCodec`, at most [`MAX_FRAME_LEN`]); the first byte is the frame kind, the
//! rest its fields, big-endian. Strings are a u16 length then UTF-8 bytes; the `body` of a
//! frame is everything after its fixed fields.
//!
//! Gateway -> backend: [`BackendFrame::Hello`] (first frame on every connection),
//! [`BackendFrame::Forward`] (a client message), [`BackendFrame::Relayed`] (a message another
//! backend relayed to this dest, connectsrv).
//! Backend -> gateway: [`BackendFrame::Reply`], [`BackendFrame::PushUser`],
//! [`BackendFrame::Kick`], [`BackendFrame::Relay`], and the room frames
//! [`BackendFrame::JoinRoom`], [`BackendFrame::LeaveRoom`], [`BackendFrame::PushRoom`],
//! [`BackendFrame::PushAll`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Protocol version carried in [`BackendFrame::Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame accepted or sent, in bytes (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 << 20;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const FORWARD: u8 = 0x02;
    pub const RELAYED: u8 = 0x03;
    pub const REPLY: u8 = 0x10;
    pub const PUSH_USER: u8 = 0x11;
    pub const KICK: u8 = 0x12;
    pub const RELAY: u8 = 0x13;
    pub const JOIN_ROOM: u8 = 0x14;
    pub const LEAVE_ROOM: u8 = 0x15;
    pub const PUSH_ROOM: u8 = 0x16;
    pub const PUSH_ALL: u8 = 0x17;
}

/// One backend protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendFrame {
    /// Gateway -> backend, first frame of a connection: who is calling.
    Hello { version: u16, node_id: u32, node_name: String },
    /// Gateway -> backend: a client message routed to this dest.
    Forward { session_id: u64, node_id: u32, msg_id: u32, seq: u32, user_id: String, body: Bytes },
    /// Gateway -> backend: a message relayed by the backend of `from_dest`.
    /// `session_id` is 0 when the relay is not about a session.
    Relayed { from_dest: u32, session_id: u64, msg_id: u32, seq: u32, body: Bytes },
    /// Backend -> gateway: send a packet to one session (a reply carries the request's seq).
    Reply { session_id: u64, msg_id: u32, seq: u32, body: Bytes },
    /// Backend -> gateway: send a packet (seq 0) to every session of a user on this node.
    PushUser { user_id: String, msg_id: u32, body: Bytes },
    /// Backend -> gateway: close a session (WebSocket close code 4004) with a reason.
    Kick { session_id: u64, reason: String },
    /// Backend -> gateway: deliver a message to the backend of `dest_id` (as `Relayed`);
    /// the pool connection is picked by `session_id` like client traffic.
    Relay { dest_id: u32, session_id: u64, msg_id: u32, seq: u32, body: Bytes },
    /// Received only, never sent: a frame whose length prefix was sound but whose content is
    /// not a valid frame (`error`: [`FrameError::label`]). The stream is still in step, so the
    /// reader goes on with the next frame.
    Malformed { kind: u8, error: &'static str },
    /// Backend -> gateway: add a session to a room (no rooms script call; host limits apply).
    JoinRoom { session_id: u64, room: String },
    /// Backend -> gateway: remove a session from a room.
    LeaveRoom { session_id: u64, room: String },
    /// Backend -> gateway: send a packet (seq 0) to every member of a room except
    /// `exclude_session` (0: none).
    PushRoom { room: String, exclude_session: u64, msg_id: u32, body: Bytes },
    /// Backend -> gateway: send a packet (seq 0) to every logged-in session of this node.
    PushAll { msg_id: u32, body: Bytes },
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame kind {0:#04x} is unknown")]
    UnknownKind(u8),
    #[error("frame kind {kind:#04x} is truncated")]
    Truncated { kind: u8 },
    #[error("string field is not UTF-8")]
    NotUtf8,
    #[error("string field of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    #[error("a malformed frame is never sent")]
    NotSendable,
}

impl FrameError {
    /// A stable name of the error, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::UnknownKind(_) => "unknown_kind",
            Self::Truncated { .. } => "truncated",
            Self::NotUtf8 => "not_utf8",
            Self::StringTooLong(_) => "string_too_long",
            Self::NotSendable => "not_sendable",
        }
    }
}

/// tokio-util codec for [`BackendFrame`]s over a byte stream.
#[derive(Debug)]
pub struct BackendCodec {
    framing: LengthDelimitedCodec,
}

impl Default for BackendCodec {
    fn default() -> Self {
        Self { framing: LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_LEN).new_codec() }
    }
}

impl Decoder for BackendCodec {
    type Item = BackendFrame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BackendFrame>, FrameError> {
        // Errors of the length prefix (a frame over MAX_FRAME_LEN) and of the socket end the
        // stream; a frame whose content is invalid is handed on as `Malformed`.
        match self.framing.decode(src)? {
            Some(frame) => {
                let kind = frame.first().copied().unwrap_or(0);
                Ok(Some(
                    parse(frame.freeze())
                        .unwrap_or_else(|e| BackendFrame::Malformed { kind, error: e.label() }),
                ))
            }
            None => Ok(None),
        }
    }
}

impl Encoder<BackendFrame> for BackendCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: BackendFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let mut payload = BytesMut::new();
        write(&frame, &mut payload)?;
        self.framing.encode(payload.freeze(), dst)?;
        Ok(())
    }
}

fn need(buf: &Bytes, n: usize, kind: u8) -> Result<(), FrameError> {
    if buf.remaining() < n { Err(FrameError::Truncated { kind }) } else { Ok(()) }
}

fn get_str(buf: &mut Bytes, kind: u8) -> Result<String, FrameError> {
    need(buf, 2, kind)?;
    let len = buf.get_u16() as usize;
    need(buf, len, kind)?;
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| FrameError::NotUtf8)
}

fn put_str(s: &str, dst: &mut BytesMut) -> Result<(), FrameError> {
    let len = u16::try_from(s.len()).map_err(|_| FrameError::StringTooLong(s.len()))?;
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn parse(mut buf: Bytes) -> Result<BackendFrame, FrameError> {
    need(&buf, 1, 0)?;
    let k = buf.get_u8();
    Ok(match k {
        kind::HELLO => {
            need(&buf, 6, k)?;
            let version = buf.get_u16();
            let node_id = buf.get_u32();
            BackendFrame::Hello { version, node_id, node_name: get_str(&mut buf, k)? }
        }
        kind::FORWARD => {
            need(&buf, 20, k)?;
            let (session_id, node_id, msg_id, seq) =
                (buf.get_u64(), buf.get_u32(), buf.get_u32(), buf.get_u32());
            let user_id = get_str(&mut buf, k)?;
            BackendFrame::Forward { session_id, node_id, msg_id, seq, user_id, body: buf }
        }
        kind::RELAYED => {
            need(&buf, 20, k)?;
            let (from_dest, session_id, msg_id, seq) =
                (buf.get_u32(), buf.get_u64(), buf.get_u32(), buf.get_u32());
            BackendFrame::Relayed { from_dest, session_id, msg_id, seq, body: buf }
        }
        kind::REPLY => {
            need(&buf, 16, k)?;
            let (session_id, msg_id, seq) = (buf.get_u64(), buf.get_u32(), buf.get_u32());
            BackendFrame::Reply { session_id, msg_id, seq, body: buf }
        }
        kind::PUSH_USER => {
            let user_id = get_str(&mut buf, k)?;
            need(&buf, 4, k)?;
            BackendFrame::PushUser { user_id, msg_id: buf.get_u32(), body: buf }
        }
        kind::KICK => {
            need(&buf, 8, k)?;
            let session_id = buf.get_u64();
            // A reason that is not UTF-8 still kicks: its invalid bytes become U+FFFD.
            let reason = String::from_utf8(buf.to_vec())
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            BackendFrame::Kick { session_id, reason }
        }
        kind::RELAY => {
            need(&buf, 20, k)?;
            let (dest_id, session_id, msg_id, seq) =
                (buf.get_u32(), buf.get_u64(), buf.get_u32(), buf.get_u32());
            BackendFrame::Relay { dest_id, session_id, msg_id, seq, body: buf }
        }
        kind::JOIN_ROOM | kind::LEAVE_ROOM => {
            need(&buf, 8, k)?;
            let session_id = buf.get_u64();
            let room = get_str(&mut buf, k)?;
            if k == kind::JOIN_ROOM {
                BackendFrame::JoinRoom { session_id, room }
            } else {
                BackendFrame::LeaveRoom { session_id, room }
            }
        }
        kind::PUSH_ROOM => {
            let room = get_str(&mut buf, k)?;
            need(&buf, 12, k)?;
            let (exclude_session, msg_id) = (buf.get_u64(), buf.get_u32());
            BackendFrame::PushRoom { room, exclude_session, msg_id, body: buf }
        }
        kind::PUSH_ALL => {
            need(&buf, 4, k)?;
            BackendFrame::PushAll { msg_id: buf.get_u32(), body: buf }
        }
        other => return Err(FrameError::UnknownKind(other)),
    })
}

fn write(frame: &BackendFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
    match frame {
        BackendFrame::Malformed { .. } => return Err(FrameError::NotSendable),
        BackendFrame::Hello { version, node_id, node_name } => {
            dst.put_u8(kind::HELLO);
            dst.put_u16(*version);
            dst.put_u32(*node_id);
            put_str(node_name, dst)?;
        }
        BackendFrame::Forward { session_id, node_id, msg_id, seq, user_id, body } => {
            dst.reserve(23 + user_id.len() + body.len());
            dst.put_u8(kind::FORWARD);
            dst.put_u64(*session_id);
            dst.put_u32(*node_id);
            dst.put_u32(*msg_id);
            dst.put_u32(*seq);
            put_str(user_id, dst)?;
            dst.put_slice(body);
        }
        BackendFrame::Relayed { from_dest, session_id, msg_id, seq, body } => {
            dst.put_u8(kind::RELAYED);
            dst.put_u32(*from_dest);
            dst.put_u64(*session_id);
            dst.put_u32(*msg_id);
            dst.put_u32(*seq);
            dst.put_slice(body);
        }
        BackendFrame::Reply { session_id, msg_id, seq, body } => {
            dst.put_u8(kind::REPLY);
            dst.put_u64(*session_id);
            dst.put_u32(*msg_id);
            dst.put_u32(*seq);
            dst.put_slice(body);
        }
        BackendFrame::PushUser { user_id, msg_id, body } => {
            dst.put_u8(kind::PUSH_USER);
            put_str(user_id, dst)?;
            dst.put_u32(*msg_id);
            dst.put_slice(body);
        }
        BackendFrame::Kick { session_id, reason } => {
            dst.put_u8(kind::KICK);
            dst.put_u64(*session_id);
            dst.put_slice(reason.as_bytes());
        }
        BackendFrame::Relay { dest_id, session_id, msg_id, seq, body } => {
            dst.put_u8(kind::RELAY);
            dst.put_u32(*dest_id);
            dst.put_u64(*session_id);
            dst.put_u32(*msg_id);
            dst.put_u32(*seq);
            dst.put_slice(body);
        }
        BackendFrame::JoinRoom { session_id, room } | BackendFrame::LeaveRoom { session_id, room } => {
            let k = if matches!(frame, BackendFrame::JoinRoom { .. }) {
                kind::JOIN_ROOM
            } else {
                kind::LEAVE_ROOM
            };
            dst.put_u8(k);
            dst.put_u64(*session_id);
            put_str(room, dst)?;
        }
        BackendFrame::PushRoom { room, exclude_session, msg_id, body } => {
            dst.put_u8(kind::PUSH_ROOM);
            put_str(room, dst)?;
            dst.put_u64(*exclude_session);
            dst.put_u32(*msg_id);
            dst.put_slice(body);
        }
        BackendFrame::PushAll { msg_id, body } => {
            dst.put_u8(kind::PUSH_ALL);
            dst.put_u32(*msg_id);
            dst.put_slice(body);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: BackendFrame) {
        let mut codec = BackendCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(frame.clone(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_kind_round_trips() {
        let body = Bytes::from_static(b"payload");
        round_trip(BackendFrame::Hello { version: 1, node_id: 3, node_name: "gw".into() });
        round_trip(BackendFrame::Forward {
            session_id: u64::MAX - 1,
            node_id: 2,
            msg_id: 100,
            seq: 9,
            user_id: "alice".into(),
            body: body.clone(),
        });
        round_trip(BackendFrame::Relayed {
            from_dest: 101,
            session_id: 5,
            msg_id: 7,
            seq: 1,
            body: body.clone(),
        });
        round_trip(BackendFrame::Reply { session_id: 5, msg_id: 100, seq: 9, body: body.clone() });
        round_trip(BackendFrame::PushUser { user_id: "bob".into(), msg_id: 8, body: body.clone() });
        round_trip(BackendFrame::Kick { session_id: 5, reason: "bye".into() });
        round_trip(BackendFrame::Relay {
            dest_id: 201,
            session_id: 0,
            msg_id: 1,
            seq: 0,
            body: body.clone(),
        });
        round_trip(BackendFrame::JoinRoom { session_id: 5, room: "lobby".into() });
        round_trip(BackendFrame::LeaveRoom { session_id: 5, room: "lobby".into() });
        round_trip(BackendFrame::PushRoom {
            room: "lobby".into(),
            exclude_session: 5,
            msg_id: 7,
            body: body.clone(),
        });
        round_trip(BackendFrame::PushAll { msg_id: 9, body });
    }

    #[test]
    fn forward_layout_is_as_documented() {
        let mut codec = BackendCodec::default();
        let mut buf = BytesMut::new();
        let frame = BackendFrame::Forward {
            session_id: 1,
            node_id: 2,
            msg_id: 3,
            seq: 4,
            user_id: "u".into(),
            body: Bytes::from_static(b"x"),
        };
        codec.encode(frame, &mut buf).unwrap();
        let expected: &[u8] = &[
            0, 0, 0, 25,   // length
            0x02, // kind
            0, 0, 0, 0, 0, 0, 0, 1, // session id
            0, 0, 0, 2, // node id
            0, 0, 0, 3, // msg id
            0, 0, 0, 4, // seq
            0, 1, b'u', // user id
            b'x', // body
        ];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn bad_frames_decode_as_malformed_and_the_next_frame_follows() {
        let mut codec = BackendCodec::default();
        let cases: [(&[u8], u8, &str); 4] = [
            (&[0x7f], 0x7f, "unknown_kind"),
            (&[kind::REPLY, 0, 0], kind::REPLY, "truncated"),
            (&[kind::PUSH_USER, 0, 2, 0xff, 0xfe], kind::PUSH_USER, "not_utf8"),
            (&[], 0, "truncated"),
        ];
        for (payload, kind, error) in cases {
            let mut buf = BytesMut::new();
            buf.put_u32(payload.len() as u32);
            buf.put_slice(payload);
            codec.encode(BackendFrame::PushAll { msg_id: 1, body: Bytes::new() }, &mut buf).unwrap();
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(BackendFrame::Malformed { kind, error }),
                "{payload:?}"
            );
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(BackendFrame::PushAll { msg_id: 1, body: Bytes::new() })
            );
        }
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(codec.decode(&mut buf).is_err(), "an oversized length is an error");
        let mut out = BytesMut::new();
        assert!(codec.encode(BackendFrame::Malformed { kind: 1, error: "x" }, &mut out).is_err());
    }

    #[test]
    fn a_kick_reason_that_is_not_utf8_still_kicks() {
        let mut buf = BytesMut::new();
        let payload = [&[kind::KICK][..], &7u64.to_be_bytes(), b"bye \xff"].concat();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(&payload);
        let frame = BackendCodec::default().decode(&mut buf).unwrap();
        assert_eq!(frame, Some(BackendFrame::Kick { session_id: 7, reason: "bye \u{FFFD}".into() }));
    }
}
