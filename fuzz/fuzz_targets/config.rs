//! The gateway's TOML config: parsing, defaults and validation never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = toml::from_str::<toml::Table>(text) else { return };
    if let Ok(config) = Config::from_table(table, std::path::Path::new("/nonexistent/wasmgate.toml")) {
        let _ = config.validate();
    }
});
