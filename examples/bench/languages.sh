#!/usr/bin/env bash
# Per-language script figures (docs/benchmarks.md, "Scripts in each language"): for the router
# templates of examples/scripts (build them first: examples/scripts/build.sh, and the Rust
# ones with cargo), prints component size, cold deploy (a fresh gateway, nothing cached:
# upload -> compile -> instantiate -> init -> live), warm deploy (the same bytes again after
# another version: the compile is cached), linear memory per instance, gateway RSS growth of
# the cold deploy, then relay round trips/s through each router and the router's mean call
# time from the gateway's own histogram.
#
#   examples/bench/languages.sh target/release/wasmgate target/release/loadgen [SECONDS]
set -euo pipefail
BIN=$1 LOADGEN=$2 SECONDS_PER_RUN=${3:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LANGS="rust c python js qjs"
declare -A ROUTER=(
    [rust]=$ROOT/target/wasm-guests/wasm32-wasip2/release/wasmgate_template_router.wasm
    [c]=$ROOT/examples/scripts/c/build/router.wasm
    [python]=$ROOT/examples/scripts/python/build/router.wasm
    [js]=$ROOT/examples/scripts/js/build/router.wasm
    [qjs]=$ROOT/examples/scripts/js/build/router-qjs.wasm
)
declare -A HANDLER=(
    [rust]=$ROOT/target/wasm-guests/wasm32-wasip2/release/wasmgate_template_handler.wasm
    [c]=$ROOT/examples/scripts/c/build/handler.wasm
    [python]=$ROOT/examples/scripts/python/build/handler.wasm
    [js]=$ROOT/examples/scripts/js/build/handler.wasm
    [qjs]=$ROOT/examples/scripts/js/build/handler-qjs.wasm
)
PORT=7600 ADMIN=127.0.0.1:7602 TOKEN=languages-bench-token
DIR=$(mktemp -d)
trap 'kill "${PID:-0}" 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/wasmgate.toml" <<TOML
[listen]
ws = "127.0.0.1:$PORT"
tcp = "127.0.0.1:$((PORT + 1))"
admin = "$ADMIN"
[admin]
token = "$TOKEN"
TOML
deploy() { # file -> seconds
    curl -s -o "$DIR/answer" -w "%{time_total}" -H "Authorization: Bearer $TOKEN" \
        --data-binary "@$1" "http://$ADMIN/scripts/router"
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
echo "lang | size MB | cold deploy s | warm deploy ms | linear memory per instance MiB | RSS growth of the cold deploy MiB"
for lang in $LANGS; do
    file=${ROUTER[$lang]}
    [ -f "$file" ] || { echo "$lang: $file missing (examples/scripts/build.sh)"; continue; }
    "$BIN" --config "$DIR/wasmgate.toml" run 2>"$DIR/log" &
    PID=$!
    for _ in $(seq 300); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
    before=$(rss)
    cold=$(deploy "$file")
    grep -q '"version"' "$DIR/answer" || { echo "$lang: refused: $(cat "$DIR/answer")"; kill $PID; continue; }
    memory=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["instance_memory_bytes"])' "$DIR/answer")
    sleep 1
    after=$(rss)
    deploy "${ROUTER[rust]}" >/dev/null
    [ "$lang" = rust ] && deploy "$ROOT/target/wasm-guests/wasm32-wasip2/release/wasmgate_script_router.wasm" >/dev/null
    warm=$(deploy "$file")
    kill $PID; wait $PID 2>/dev/null || true
    printf "%s | %.1f | %.2f | %.0f | %.1f | %.0f\n" "$lang" "$(echo "$(stat -c %s "$file") / 1000000" | bc -l)" \
        "$cold" "$(echo "$warm * 1000" | bc -l)" "$(echo "$memory / 1048576" | bc -l)" "$(echo "($after - $before) / 1024" | bc -l)"
done
for lang in $LANGS; do
    [ -f "${ROUTER[$lang]}" ] || continue
    echo "== relay through the $lang router"
    "$LOADGEN" relay --targets wasmgate --gateway "$BIN" --router "${ROUTER[$lang]}" --seconds "$SECONDS_PER_RUN" \
        | grep -E "saturation|router calls"
done
echo "== one call into a live instance (route: message 150, answered by the router; handle: one packet)"
ARGS=()
for lang in $LANGS; do
    [ -f "${ROUTER[$lang]}" ] && ARGS+=(--router "$lang=${ROUTER[$lang]}")
    [ -f "${HANDLER[$lang]}" ] && ARGS+=(--handler "$lang=${HANDLER[$lang]}")
done
(cd "$ROOT" && cargo bench --quiet -p wasmgate --bench script_call -- "${ARGS[@]}")
