#!/usr/bin/env bash
# Gateway RSS around deploys of a large component (docs/benchmarks.md, "Deploying large
# components"): starts BINARY on loopback with an admin token, deploys ACCEPTED as the router
# (a component the gateway takes), then REFUSED (one it refuses, e.g. for its imports), and
# prints RSS (KiB) at start and after each, the time each deploy took, and the CPU used.
#
#   examples/bench/deploy_rss.sh target/release/wasmgate router_stub.wasm router_default.wasm [PORT]
set -euo pipefail
BIN=$1 ACCEPTED=$2 REFUSED=$3 PORT=${4:-7300}
ADMIN=127.0.0.1:$((PORT + 2)) TOKEN=deploy-rss-token
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null; rm -rf "$DIR"' EXIT
cat > "$DIR/wasmgate.toml" <<TOML
[listen]
ws = "127.0.0.1:$PORT"
tcp = "127.0.0.1:$((PORT + 1))"
admin = "$ADMIN"
[admin]
token = "$TOKEN"
TOML
"$BIN" --config "$DIR/wasmgate.toml" run 2>"$DIR/log" &
PID=$!
for _ in $(seq 300); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
deploy() {
    curl -s -o /dev/null -w "status %{http_code}, %{time_total} s" -H "Authorization: Bearer $TOKEN" \
        --data-binary "@$1" "http://$ADMIN/scripts/router"
}
echo "start: $(rss) KiB"
echo "deploy $(basename "$ACCEPTED"): $(deploy "$ACCEPTED")"; sleep 1; echo "  after: $(rss) KiB"
echo "deploy $(basename "$REFUSED"): $(deploy "$REFUSED")"; sleep 1; echo "  after: $(rss) KiB"
echo "CPU: $(awk '{printf "%.1f s", ($14 + $15) / 100}' "/proc/$PID/stat")"
