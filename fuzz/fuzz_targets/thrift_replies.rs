//! Thrift replies as a Thrift dest's connection delivers them, in each encoding and framing
//! (the first byte picks which): decoding never panics, allocates no more than the 16 MiB
//! limits allow, and either yields messages or ends the stream with an error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder as _;
use wasmgate::protocol::thrift::{Encoding, Framing, ThriftCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let encoding = if mode & 1 == 0 { Encoding::Binary } else { Encoding::Compact };
    let framing = if mode & 2 == 0 { Framing::Framed } else { Framing::Buffered };
    let mut codec = ThriftCodec::new(encoding, framing, "call");
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
});
