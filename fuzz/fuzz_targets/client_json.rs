//! Client JSON packets (WebSocket text frames): decoding never panics; a decoded packet
//! encodes to JSON that decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::protocol::client;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(packet) = client::decode_json(text) {
        let json = client::encode_json(packet.msg_id, packet.seq, &packet.body);
        let again = client::decode_json(&json).expect("the gateway's own JSON decodes");
        assert_eq!((again.msg_id, again.seq), (packet.msg_id, packet.seq));
    }
});
