//! go-push messages (WebSocket text frames of go-push clients): decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::protocol::gopush;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gopush::decode(text);
    }
});
