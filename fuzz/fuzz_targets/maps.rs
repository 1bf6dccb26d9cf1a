//! `dest_map.json` and `message_map.json` (files an operator or the config centre writes):
//! parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::maps;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = maps::parse_dest_map(text);
        let _ = maps::parse_message_map(text);
    }
});
