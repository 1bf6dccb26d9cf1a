#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable Rust (no
# sanitizer: the decoders are safe Rust; rustc-wrapper.sh) and runs each for SECONDS (default 10), starting from
# the committed corpus (fuzz/corpus/<target>, read only; new inputs go to target/fuzz/new).
# Exits non-zero at the first crash, leaving the input in target/fuzz/artifacts/<target>/.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_binary client_json gopush tcp_framing ws_frames backend_frames thrift_replies maps manifest config recording)
out=../target/fuzz
triple=$(rustc -vV | sed -n 's/^host: //p')
# Coverage instrumentation only where the targets explore (see rustc-wrapper.sh).
RUSTC_WRAPPER="$PWD/rustc-wrapper.sh" cargo build --quiet --target "$triple" --target-dir "$out" --bins
for t in "${targets[@]}"; do
    mkdir -p "$out/new/$t" "$out/artifacts/$t" "corpus/$t"
    echo "== fuzz $t for ${seconds}s"
    "$out/$triple/debug/$t" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t/" "$out/new/$t" "corpus/$t" 2>"$out/$t.log" \
        || { tail -40 "$out/$t.log"; echo "fuzz target $t failed; input in $out/artifacts/$t/"; exit 1; }
    grep -E "stat::number_of_executed_units|cov: " "$out/$t.log" | tail -2
done
