#!/usr/bin/env bash
# Builds every non-Rust script template with its pinned toolchain (installed from crates.io,
# Debian, PyPI and npm when missing): {c,python,js}/build/{router,handler}.wasm. The
# Rust templates build with cargo (`cargo build --release --target wasm32-wasip2 -p
# wasmgate-template-router -p wasmgate-template-handler`; the tests' build script does it).
# The end-to-end tests deploy what this produces; CI runs it before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
c/build.sh
python/build.sh
js/build.sh
