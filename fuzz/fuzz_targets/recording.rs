//! A recording file (`wasmgate replay` reads it; docs/evidence.md): parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::script::evidence::record;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = record::parse(text);
    }
});
