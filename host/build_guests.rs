//! Shared by build scripts: compiles guest crates of this workspace to `wasm32-wasip2`
//! components with a nested cargo (the pattern of wasmtime's test-programs artifacts).
//! The nested build uses its own target directory (`target/wasm-guests`), so it never waits
//! on the outer build's lock and is shared by every profile.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` and returns the path of each `.wasm`, in order.
pub fn build_guests(workspace: &Path, packages: &[&str]) -> Vec<PathBuf> {
    let target_dir = workspace.join("target").join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // Small components compile fast into the host; wasm backtraces still name functions.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "true");
    for package in packages {
        cmd.args(["-p", package]);
    }
    // Do not leak the outer build's settings (clippy wrapper, host rustflags, jobserver,
    // coverage) into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the wasm guests");
    if !status.success() {
        panic!(
            "building the wasm guests {packages:?} failed; is the target installed? \
             run `rustup target add wasm32-wasip2`"
        );
    }
    for dir in ["wit", "guest-sdk", "scripts", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    packages
        .iter()
        .map(|p| target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", p.replace('-', "_"))))
        .collect()
}
