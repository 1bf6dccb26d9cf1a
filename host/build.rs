//! Builds the default scripts (`scripts/auth`, `scripts/router`, `scripts/rooms`) into components that the
//! binary embeds, so `wasmgate` runs with no files at all.

#[path = "build_guests.rs"]
mod build_guests;

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(Path::new(".."));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let built = build_guests::build_guests(
        workspace,
        &["wasmgate-script-auth", "wasmgate-script-router", "wasmgate-script-rooms"],
    );
    for (wasm, name) in built.iter().zip(["auth.wasm", "router.wasm", "rooms.wasm"]) {
        std::fs::copy(wasm, out.join(name)).unwrap_or_else(|e| panic!("copying {}: {e}", wasm.display()));
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_guests.rs");
}
