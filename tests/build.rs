//! Builds the test guests (`tests/guests/*`) and tells the tests where they are.

#[path = "../host/build_guests.rs"]
mod build_guests;

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(Path::new(".."));
    let built = build_guests::build_guests(
        workspace,
        &[
            "wasmgate-test-hostile-router",
            "wasmgate-test-forbidden-import",
            "wasmgate-test-counter-handler",
            "wasmgate-test-unknown-import",
            "wasmgate-template-router",
            "wasmgate-template-handler",
        ],
    );
    println!("cargo:rustc-env=HOSTILE_ROUTER_WASM={}", built[0].display());
    println!("cargo:rustc-env=FORBIDDEN_IMPORT_WASM={}", built[1].display());
    println!("cargo:rustc-env=COUNTER_HANDLER_WASM={}", built[2].display());
    println!("cargo:rustc-env=UNKNOWN_IMPORT_WASM={}", built[3].display());
    println!("cargo:rustc-env=RUST_TEMPLATE_ROUTER_WASM={}", built[4].display());
    println!("cargo:rustc-env=RUST_TEMPLATE_HANDLER_WASM={}", built[5].display());
    println!("cargo:rerun-if-changed=../examples/scripts/rust");
    println!("cargo:rerun-if-changed=build.rs");
}
