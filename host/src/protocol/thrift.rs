//! Seed 001's Thrift RPC to backends: `ProtoReply call(1: ProtoRequest request)` of the
//! service in `thrift/protoservice.thrift`, in Thrift's binary or compact protocol, over the
//! framed transport (a u32 big-endian length before each message) or the buffered one (messages
//! back to back). docs/protocol.md ("Thrift upstreams") has the byte layouts.
//!
//! The Apache `thrift` crate reads and writes the protocol, over in-memory buffers; the socket
//! I/O is tokio's. [`ThriftCodec`] is a tokio-util codec: calls go out, replies come in.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier,
    TType,
};
use thrift::{TConfiguration, TransportErrorKind};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::backend::MAX_FRAME_LEN;

/// The Thrift protocol (encoding) a dest speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `TBinaryProtocol` (strict writes, either form read): what Thrift's generated Go servers
    /// use unless told otherwise.
    #[default]
    Binary,
    /// `TCompactProtocol`.
    Compact,
}

/// The Thrift transport a dest speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `TFramedTransport`: each message after a u32 big-endian length (at most 16 MiB).
    #[default]
    Framed,
    /// `TBufferedTransport`: messages back to back (at most 16 MiB each).
    Buffered,
}

/// The request of seed 001: `ProtoRequest{1: i32 type, 2: binary content, 3: i64 sharding_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoRequest {
    pub msg_type: i32,
    pub content: Bytes,
    pub sharding_id: i64,
}

/// The reply of seed 001: `ProtoReply{1: i64 result, 2: i32 type, 3: binary content}`. A
/// field the backend leaves out reads as 0 or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtoReply {
    pub result: i64,
    pub msg_type: i32,
    pub content: Bytes,
}

/// One message from a Thrift backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The answer to call `seqid`.
    Reply { seqid: i32, reply: ProtoReply },
    /// Call `seqid` failed in the backend (a `TApplicationException`: unknown method, an
    /// exception in the handler...).
    Exception { seqid: i32, message: String },
    /// A message that is not a valid reply to a call; the stream is still in step (framed
    /// transport). `seqid` when the message header could be read.
    Malformed { seqid: Option<i32>, error: String },
}

/// Why the stream from a Thrift backend cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ThriftError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Codec of one Thrift connection: encodes `(seqid, request)` calls of `method`, decodes
/// [`Incoming`] messages.
#[derive(Debug)]
pub struct ThriftCodec {
    encoding: Encoding,
    framing: Framing,
    method: String,
    frames: LengthDelimitedCodec,
}

impl ThriftCodec {
    pub fn new(encoding: Encoding, framing: Framing, method: &str) -> Self {
        let frames = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_LEN).new_codec();
        Self { encoding, framing, method: method.to_string(), frames }
    }
}

/// Limits on what a reply may declare: no string or container beyond a frame.
fn limits() -> TConfiguration {
    TConfiguration::builder()
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
        .max_string_size(Some(MAX_FRAME_LEN))
        .max_container_size(Some(MAX_FRAME_LEN))
        .max_recursion_depth(Some(64))
        .build()
        .unwrap_or_default()
}

impl Encoder<(i32, ProtoRequest)> for ThriftCodec {
    type Error = ThriftError;

    fn encode(
        &mut self,
        (seqid, request): (i32, ProtoRequest),
        dst: &mut BytesMut,
    ) -> Result<(), ThriftError> {
        let start = dst.len();
        if self.framing == Framing::Framed {
            dst.put_u32(0);
        }
        let body_start = dst.len();
        let mut writer = dst.writer();
        let written = match self.encoding {
            Encoding::Binary => {
                write_call(&mut TBinaryOutputProtocol::new(&mut writer, true), &self.method, seqid, &request)
            }
            Encoding::Compact => {
                write_call(&mut TCompactOutputProtocol::new(&mut writer), &self.method, seqid, &request)
            }
        };
        if let Err(e) = written {
            dst.truncate(start);
            return Err(ThriftError::Protocol(e.to_string()));
        }
        let len = dst.len() - body_start;
        if len > MAX_FRAME_LEN {
            dst.truncate(start);
            return Err(ThriftError::Protocol(format!("a call of {len} bytes is over the 16 MiB limit")));
        }
        if self.framing == Framing::Framed {
            dst[start..body_start].copy_from_slice(&(len as u32).to_be_bytes());
        }
        Ok(())
    }
}

/// `call_args { 1: ProtoRequest request }` as a `Call` message.
fn write_call(
    out: &mut dyn TOutputProtocol,
    method: &str,
    seqid: i32,
    req: &ProtoRequest,
) -> thrift::Result<()> {
    out.write_message_begin(&TMessageIdentifier::new(method, TMessageType::Call, seqid))?;
    out.write_struct_begin(&TStructIdentifier::new(format!("{method}_args")))?;
    out.write_field_begin(&TFieldIdentifier::new("request", TType::Struct, 1))?;
    out.write_struct_begin(&TStructIdentifier::new("ProtoRequest"))?;
    out.write_field_begin(&TFieldIdentifier::new("type", TType::I32, 1))?;
    out.write_i32(req.msg_type)?;
    out.write_field_end()?;
    out.write_field_begin(&TFieldIdentifier::new("content", TType::String, 2))?;
    out.write_bytes(&req.content)?;
    out.write_field_end()?;
    out.write_field_begin(&TFieldIdentifier::new("sharding_id", TType::I64, 3))?;
    out.write_i64(req.sharding_id)?;
    out.write_field_end()?;
    out.write_field_stop()?;
    out.write_struct_end()?;
    out.write_field_end()?;
    out.write_field_stop()?;
    out.write_struct_end()?;
    out.write_message_end()?;
    out.flush()
}

impl Decoder for ThriftCodec {
    type Item = Incoming;
    type Error = ThriftError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ThriftError> {
        match self.framing {
            Framing::Framed => {
                let Some(frame) = self.frames.decode(src)? else { return Ok(None) };
                let mut rest: &[u8] = &frame;
                Ok(Some(match read_message(self.encoding, &mut rest) {
                    Ok(incoming) => incoming,
                    Err((seqid, e)) => Incoming::Malformed { seqid, error: e.to_string() },
                }))
            }
            Framing::Buffered => {
                // A message's end is known only by parsing it: parse what has arrived, and
                // again when more arrives if it was cut short.
                let mut rest: &[u8] = src;
                match read_message(self.encoding, &mut rest) {
                    Ok(incoming) => {
                        let used = src.len() - rest.len();
                        src.advance(used);
                        Ok(Some(incoming))
                    }
                    Err((_, thrift::Error::Transport(e))) if e.kind == TransportErrorKind::EndOfFile => {
                        if src.len() > MAX_FRAME_LEN {
                            return Err(ThriftError::Protocol("a reply over the 16 MiB limit".into()));
                        }
                        Ok(None)
                    }
                    // Without frames a bad message leaves the stream out of step.
                    Err((_, e)) => Err(ThriftError::Protocol(e.to_string())),
                }
            }
        }
    }
}

/// Reads one message; on failure the error and, if the header was read, the seqid.
fn read_message(encoding: Encoding, bytes: &mut &[u8]) -> Result<Incoming, (Option<i32>, thrift::Error)> {
    match encoding {
        Encoding::Binary => read_incoming(&mut TBinaryInputProtocol::with_config(bytes, false, limits())),
        Encoding::Compact => read_incoming(&mut TCompactInputProtocol::with_config(bytes, limits())),
    }
}

fn read_incoming(input: &mut dyn TInputProtocol) -> Result<Incoming, (Option<i32>, thrift::Error)> {
    let header = input.read_message_begin().map_err(|e| (None, e))?;
    let seqid = header.sequence_number;
    let with_seqid = |e| (Some(seqid), e);
    match header.message_type {
        TMessageType::Reply => {
            let reply = read_result(input).map_err(with_seqid)?;
            input.read_message_end().map_err(with_seqid)?;
            Ok(match reply {
                Some(reply) => Incoming::Reply { seqid, reply },
                None => {
                    Incoming::Malformed { seqid: Some(seqid), error: "the reply has no ProtoReply".into() }
                }
            })
        }
        TMessageType::Exception => {
            let error = thrift::Error::read_application_error_from_in_protocol(input).map_err(with_seqid)?;
            input.read_message_end().map_err(with_seqid)?;
            Ok(Incoming::Exception { seqid, message: format!("{:?}: {}", error.kind, error.message) })
        }
        other => Ok(Incoming::Malformed {
            seqid: Some(seqid),
            error: format!("a {other:?} message from the backend"),
        }),
    }
}

/// `call_result { 0: ProtoReply success }`: the success value, if there is one.
fn read_result(input: &mut dyn TInputProtocol) -> thrift::Result<Option<ProtoReply>> {
    let mut success = None;
    input.read_struct_begin()?;
    loop {
        let field = input.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(0), TType::Struct) => success = Some(read_reply(input)?),
            (_, other) => input.skip(other)?,
        }
        input.read_field_end()?;
    }
    input.read_struct_end()?;
    Ok(success)
}

fn read_reply(input: &mut dyn TInputProtocol) -> thrift::Result<ProtoReply> {
    let mut reply = ProtoReply::default();
    input.read_struct_begin()?;
    loop {
        let field = input.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(1), TType::I64) => reply.result = input.read_i64()?,
            (Some(2), TType::I32) => reply.msg_type = input.read_i32()?,
            (Some(3), TType::String) => reply.content = Bytes::from(input.read_bytes()?),
            (_, other) => input.skip(other)?,
        }
        input.read_field_end()?;
    }
    input.read_struct_end()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a generated server writes back for `call`: the reply in `call_result`'s field 0.
    fn server_reply(encoding: Encoding, seqid: i32, reply: &ProtoReply) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut out: Box<dyn TOutputProtocol> = match encoding {
            Encoding::Binary => Box::new(TBinaryOutputProtocol::new(&mut buf, true)),
            Encoding::Compact => Box::new(TCompactOutputProtocol::new(&mut buf)),
        };
        out.write_message_begin(&TMessageIdentifier::new("call", TMessageType::Reply, seqid)).unwrap();
        out.write_struct_begin(&TStructIdentifier::new("call_result")).unwrap();
        out.write_field_begin(&TFieldIdentifier::new("success", TType::Struct, 0)).unwrap();
        out.write_struct_begin(&TStructIdentifier::new("ProtoReply")).unwrap();
        out.write_field_begin(&TFieldIdentifier::new("result", TType::I64, 1)).unwrap();
        out.write_i64(reply.result).unwrap();
        out.write_field_end().unwrap();
        // An unknown field is skipped.
        out.write_field_begin(&TFieldIdentifier::new("extra", TType::String, 9)).unwrap();
        out.write_string("ignored").unwrap();
        out.write_field_end().unwrap();
        out.write_field_begin(&TFieldIdentifier::new("type", TType::I32, 2)).unwrap();
        out.write_i32(reply.msg_type).unwrap();
        out.write_field_end().unwrap();
        out.write_field_begin(&TFieldIdentifier::new("content", TType::String, 3)).unwrap();
        out.write_bytes(&reply.content).unwrap();
        out.write_field_end().unwrap();
        out.write_field_stop().unwrap();
        out.write_struct_end().unwrap();
        out.write_field_end().unwrap();
        out.write_field_stop().unwrap();
        out.write_struct_end().unwrap();
        out.write_message_end().unwrap();
        drop(out);
        buf
    }

    /// The request a generated server reads from our call.
    fn server_read_call(encoding: Encoding, mut bytes: &[u8]) -> (TMessageIdentifier, ProtoRequest) {
        let mut input: Box<dyn TInputProtocol> = match encoding {
            Encoding::Binary => Box::new(TBinaryInputProtocol::new(&mut bytes, true)),
            Encoding::Compact => Box::new(TCompactInputProtocol::new(&mut bytes)),
        };
        let header = input.read_message_begin().unwrap();
        input.read_struct_begin().unwrap();
        let field = input.read_field_begin().unwrap();
        assert_eq!((field.id, field.field_type), (Some(1), TType::Struct));
        input.read_struct_begin().unwrap();
        let mut req = ProtoRequest { msg_type: 0, content: Bytes::new(), sharding_id: 0 };
        loop {
            let field = input.read_field_begin().unwrap();
            if field.field_type == TType::Stop {
                break;
            }
            match field.id {
                Some(1) => req.msg_type = input.read_i32().unwrap(),
                Some(2) => req.content = input.read_bytes().unwrap().into(),
                Some(3) => req.sharding_id = input.read_i64().unwrap(),
                other => panic!("unexpected field {other:?}"),
            }
            input.read_field_end().unwrap();
        }
        (header, req)
    }

    #[test]
    fn calls_and_replies_round_trip_in_every_encoding_and_framing() {
        for encoding in [Encoding::Binary, Encoding::Compact] {
            for framing in [Framing::Framed, Framing::Buffered] {
                let mut codec = ThriftCodec::new(encoding, framing, "call");
                let request =
                    ProtoRequest { msg_type: 100, content: Bytes::from_static(b"hi"), sharding_id: -7 };
                let mut out = BytesMut::new();
                codec.encode((42, request.clone()), &mut out).unwrap();
                let body = match framing {
                    Framing::Framed => {
                        assert_eq!(out.get_u32() as usize, out.len());
                        &out[..]
                    }
                    Framing::Buffered => &out[..],
                };
                let (header, got) = server_read_call(encoding, body);
                assert_eq!(
                    (header.name.as_str(), header.message_type, header.sequence_number),
                    ("call", TMessageType::Call, 42)
                );
                assert_eq!(got, request);

                let reply = ProtoReply { result: 3, msg_type: 101, content: Bytes::from_static(b"back") };
                let bytes = server_reply(encoding, 42, &reply);
                let mut wire = BytesMut::new();
                if framing == Framing::Framed {
                    wire.put_u32(bytes.len() as u32);
                }
                // Arrives in two pieces, then a second reply right behind it.
                let (first, second) = bytes.split_at(bytes.len() / 2);
                wire.extend_from_slice(first);
                assert_eq!(codec.decode(&mut wire).unwrap(), None, "{encoding:?} {framing:?}");
                wire.extend_from_slice(second);
                if framing == Framing::Framed {
                    wire.put_u32(bytes.len() as u32);
                }
                wire.extend_from_slice(&server_reply(encoding, 43, &reply));
                assert_eq!(
                    codec.decode(&mut wire).unwrap(),
                    Some(Incoming::Reply { seqid: 42, reply: reply.clone() })
                );
                assert_eq!(codec.decode(&mut wire).unwrap(), Some(Incoming::Reply { seqid: 43, reply }));
                assert!(wire.is_empty());
            }
        }
    }

    /// The bytes of the hex dump after `<!-- doc-test: NAME -->` in docs/protocol.md (each
    /// line's leading two-digit hex tokens; the rest of the line describes them).
    fn doc_bytes(name: &str) -> Vec<u8> {
        let doc = include_str!("../../../docs/protocol.md");
        let marker = format!("<!-- doc-test: {name} -->");
        let after = &doc[doc.find(&marker).expect("marker") + marker.len()..];
        let block = &after[after.find("```\n").expect("block") + 4..];
        let block = &block[..block.find("```").expect("closing fence")];
        block
            .lines()
            .flat_map(|line| {
                line.split_whitespace().map_while(|token| {
                    (token.len() == 2).then(|| u8::from_str_radix(token, 16).ok()).flatten()
                })
            })
            .collect()
    }

    #[test]
    fn the_documented_call_and_reply_are_what_the_codec_writes_and_reads() {
        let mut codec = ThriftCodec::new(Encoding::Binary, Framing::Framed, "call");
        let mut out = BytesMut::new();
        let request = ProtoRequest { msg_type: 100, content: Bytes::from_static(b"hi"), sharding_id: 7 };
        codec.encode((1, request), &mut out).unwrap();
        assert_eq!(&out[..], &doc_bytes("thrift call")[..]);
        let mut wire = BytesMut::from(&doc_bytes("thrift reply")[..]);
        let reply = ProtoReply { result: 0, msg_type: 101, content: Bytes::from_static(b"ok") };
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(Incoming::Reply { seqid: 1, reply }));
        assert!(wire.is_empty());
    }

    #[test]
    fn an_application_exception_names_its_call() {
        let mut buf = Vec::new();
        let mut out = TBinaryOutputProtocol::new(&mut buf, true);
        out.write_message_begin(&TMessageIdentifier::new("call", TMessageType::Exception, 9)).unwrap();
        let error =
            thrift::ApplicationError::new(thrift::ApplicationErrorKind::UnknownMethod, "no such method");
        thrift::Error::write_application_error_to_out_protocol(&error, &mut out).unwrap();
        out.write_message_end().unwrap();
        let mut codec = ThriftCodec::new(Encoding::Binary, Framing::Buffered, "call");
        let mut wire = BytesMut::from(&buf[..]);
        match codec.decode(&mut wire).unwrap() {
            Some(Incoming::Exception { seqid: 9, message }) => {
                assert!(message.contains("no such method"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_framed_message_is_skipped_and_a_bad_buffered_one_ends_the_stream() {
        let junk = [0x80, 0x01, 0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0x00];
        let mut framed = ThriftCodec::new(Encoding::Binary, Framing::Framed, "call");
        let mut wire = BytesMut::new();
        wire.put_u32(junk.len() as u32);
        wire.extend_from_slice(&junk);
        assert!(matches!(framed.decode(&mut wire).unwrap(), Some(Incoming::Malformed { .. })));
        let mut buffered = ThriftCodec::new(Encoding::Binary, Framing::Buffered, "call");
        let mut wire = BytesMut::from(&[0x00, 0x00, 0x00, 0x04, b'c', b'a', b'l', b'l', 0x07][..]);
        assert!(buffered.decode(&mut wire).is_err());
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_without_allocating_it() {
        let mut codec = ThriftCodec::new(Encoding::Binary, Framing::Buffered, "call");
        let mut wire = BytesMut::new();
        wire.put_u32(0x8001_0002); // strict binary, Reply
        wire.put_u32(4);
        wire.put_slice(b"call");
        wire.put_i32(1);
        wire.put_u8(12); // struct field 0
        wire.put_i16(0);
        wire.put_u8(11); // string field 3 of the reply...
        wire.put_i16(3);
        wire.put_i32(i32::MAX); // ...of 2 GiB
        assert!(codec.decode(&mut wire).is_err());
    }
}
