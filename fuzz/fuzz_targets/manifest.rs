//! The scripts directory's `manifest.toml`: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::script::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(text);
    }
});
