//! TCP client framing with every prefix setting (2 or 4 bytes, big- or little-endian, as
//! `tcp.len_msg_len` / `tcp.little_endian`), then each frame as a packet: never panics, never
//! yields a frame over the bound.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder as _;
use wasmgate::config::TcpFramingConfig;
use wasmgate::downstream::tcp;
use wasmgate::protocol::client;

const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    for (len_msg_len, little_endian) in [(2, false), (2, true), (4, false), (4, true)] {
        let mut codec = tcp::codec(&TcpFramingConfig { len_msg_len, little_endian }, MAX_FRAME);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            assert!(frame.len() <= MAX_FRAME);
            let _ = client::decode_binary(Bytes::from(frame));
        }
    }
});
