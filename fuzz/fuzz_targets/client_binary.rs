//! Client binary packets (WebSocket binary frames, TCP frames' payloads): decoding never
//! panics, and what decodes encodes back to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wasmgate::protocol::client;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = client::decode_binary(Bytes::copy_from_slice(data)) {
        let mut again = BytesMut::new();
        client::encode_binary(packet.msg_id, packet.seq, &packet.body, &mut again);
        assert_eq!(&again[..], data);
    }
});
