//! Seed 001's ES packet header on the TCP listener (`tcp.header = "es"`, docs/protocol.md):
//!
//! ```text
//! 0       2         4                 12        16        20                28
//! +-------+---------+-----------------+---------+---------+-----------------+---------
//! |pack_  |pack_type| user_id         | token   | es_id   | session         | body ...
//! |len u16|  u16    |   u64           |  u32    |  u32    |   u64           |
//! +-------+---------+-----------------+---------+---------+-----------------+---------
//! ```
//!
//! `pack_len` counts the whole packet, header included (28 + body); every field is in the
//! byte order of `tcp.little_endian` (default big-endian). Client -> gateway: `pack_type` is
//! the message id, `token` the packet's seq, `es_id` is handed to scripts; `user_id` and
//! `session` are ignored (the gateway knows both). Gateway -> client: `pack_type` = message id,
//! `token` = the seq of the packet answered (0: none), `user_id` = the session's user id when
//! it is a decimal u64 (else 0), `es_id` = the last `es_id` the client sent, `session` = the
//! session id.

use bytes::{BufMut, Bytes, BytesMut};

use super::client::Packet;

/// Bytes of the ES header.
pub const ES_HEADER_LEN: usize = 28;

/// Largest body an ES packet can carry: `pack_len` is a u16 counting the header too.
pub const MAX_ES_BODY: usize = u16::MAX as usize - ES_HEADER_LEN;

/// Why a packet cannot be written with the ES header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EsError {
    #[error("message id {0} does not fit the ES header's u16 pack_type")]
    MsgIdTooLarge(u32),
    #[error("a {0}-byte body does not fit the ES header's u16 pack_len")]
    BodyTooLong(usize),
}

/// What the gateway puts in the header of each packet it sends a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sender {
    pub user_id: u64,
    pub es_id: u32,
    pub session: u64,
}

/// `pack_len` of a header's first two bytes.
pub fn pack_len(first: [u8; 2], little_endian: bool) -> u16 {
    if little_endian { u16::from_le_bytes(first) } else { u16::from_be_bytes(first) }
}

/// Decodes one whole ES packet (`frame` is `pack_len` bytes, at least [`ES_HEADER_LEN`]) into
/// a packet carrying its `es_id`; the body is not copied.
pub fn decode(frame: Bytes, little_endian: bool) -> Packet {
    let field = |at: usize, n: usize| -> u64 {
        let bytes = &frame[at..at + n];
        let fold = |acc: u64, b: &u8| (acc << 8) | u64::from(*b);
        if little_endian { bytes.iter().rev().fold(0, fold) } else { bytes.iter().fold(0, fold) }
    };
    let msg_id = field(2, 2) as u32;
    let seq = field(12, 4) as u32;
    let es_id = field(16, 4) as u32;
    Packet { msg_id, seq, body: frame.slice(ES_HEADER_LEN..), es_id: Some(es_id) }
}

/// Appends one ES packet to `dst`.
pub fn encode(
    msg_id: u32,
    seq: u32,
    body: &[u8],
    from: Sender,
    little_endian: bool,
    dst: &mut BytesMut,
) -> Result<(), EsError> {
    let pack_type = u16::try_from(msg_id).map_err(|_| EsError::MsgIdTooLarge(msg_id))?;
    if body.len() > MAX_ES_BODY {
        return Err(EsError::BodyTooLong(body.len()));
    }
    let pack_len = (ES_HEADER_LEN + body.len()) as u16;
    dst.reserve(ES_HEADER_LEN + body.len());
    if little_endian {
        dst.put_u16_le(pack_len);
        dst.put_u16_le(pack_type);
        dst.put_u64_le(from.user_id);
        dst.put_u32_le(seq);
        dst.put_u32_le(from.es_id);
        dst.put_u64_le(from.session);
    } else {
        dst.put_u16(pack_len);
        dst.put_u16(pack_type);
        dst.put_u64(from.user_id);
        dst.put_u32(seq);
        dst.put_u32(from.es_id);
        dst.put_u64(from.session);
    }
    dst.put_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_in_both_byte_orders() {
        for little in [false, true] {
            let mut out = BytesMut::new();
            let from = Sender { user_id: 42, es_id: 7, session: 0x0102_0304_0506_0708 };
            encode(300, 9, b"body", from, little, &mut out).unwrap();
            assert_eq!(out.len(), ES_HEADER_LEN + 4);
            assert_eq!(usize::from(pack_len([out[0], out[1]], little)), out.len());
            let packet = decode(out.freeze(), little);
            assert_eq!(
                (packet.msg_id, packet.seq, packet.es_id, &packet.body[..]),
                (300, 9, Some(7), &b"body"[..])
            );
        }
    }

    #[test]
    fn the_documented_example_decodes_and_encodes() {
        // docs/protocol.md, "ES packet header": the hex line after the marker.
        let doc = include_str!("../../../docs/protocol.md");
        let marker = "<!-- doc-test: es packet -->";
        let after = &doc[doc.find(marker).expect("marker") + marker.len()..];
        let line = after.lines().nth(2).expect("the hex line");
        let wire: Vec<u8> = line
            .split_whitespace()
            .map_while(|t| (t.len() == 2).then(|| u8::from_str_radix(t, 16).ok()).flatten())
            .collect();
        let packet = decode(Bytes::copy_from_slice(&wire), false);
        assert_eq!(
            (packet.msg_id, packet.seq, packet.es_id, &packet.body[..]),
            (100, 5, Some(3), &b"hi"[..])
        );
        let mut out = BytesMut::new();
        encode(100, 5, b"hi", Sender { user_id: 0, es_id: 3, session: 0 }, false, &mut out).unwrap();
        assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let mut out = BytesMut::new();
        assert_eq!(
            encode(70_000, 0, b"", Sender::default(), false, &mut out),
            Err(EsError::MsgIdTooLarge(70_000))
        );
        let big = vec![0; MAX_ES_BODY + 1];
        assert_eq!(
            encode(1, 0, &big, Sender::default(), false, &mut out),
            Err(EsError::BodyTooLong(big.len()))
        );
        assert!(out.is_empty());
        encode(1, 0, &big[1..], Sender::default(), false, &mut out).unwrap();
        assert_eq!(out.len(), u16::MAX as usize);
    }
}
