#!/bin/sh
# RUSTC_WRAPPER for fuzz/run.sh: adds libFuzzer's coverage instrumentation (what cargo-fuzz
# passes for `--sanitizer none`, all stable flags) to the crates whose code the targets
# explore — the gateway, the fuzz targets, and the parsers under the decoders (thrift's too) — and to nothing
# else (the rest of the dependency graph builds as usual, and fast). run.sh builds with
# `--target`, which cargo passes to rustc only for the target's crates: build scripts, proc
# macros and their dependencies (built for the host, without `--target`) stay uninstrumented.
rustc=$1
shift
case " $* " in
*" --target "*) ;;
*) exec "$rustc" "$@" ;;
esac
case "$CARGO_PKG_NAME" in
wasmgate | wasmgate-fuzz | serde_json | toml | toml_parser | tokio-util | bytes | thrift)
    exec "$rustc" "$@" --cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks
    ;;
*) exec "$rustc" "$@" ;;
esac
