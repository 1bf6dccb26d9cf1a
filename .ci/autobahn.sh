#!/usr/bin/env bash
# Autobahn testsuite (`wstest -m fuzzingclient`, cases 1-11) against the gateway's conformance
# echo endpoint (`listen.ws_echo_path`), on the plain `ws` listener and then on `wss` (the
# gateway's own TLS stream, a self-signed certificate made with openssl); fails if any case
# FAILED. Needs ../shared/tools (the suite's private Python 2.7 build), openssl and a built
# gateway (WASMGATE_BIN, default the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${WASMGATE_BIN:-target/debug/wasmgate}
export DIR=${AUTOBAHN_DIR:-$PWD/target/autobahn}
bash ../shared/tools/setup-autobahn.sh
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ws=$(free_port); wss=$(free_port); tcp=$(free_port); admin=$(free_port)
command -v openssl >/dev/null || apt-get install -y -q openssl >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
cat >"$DIR/wasmgate.toml" <<TOML
[listen]
ws = "127.0.0.1:$ws"
wss = "127.0.0.1:$wss"
tcp = "127.0.0.1:$tcp"
admin = "127.0.0.1:$admin"
ws_echo_path = "/echo"
[limits]
max_msg_len = 16777216
[rate_limits]
msg_per_s = 0
bytes_per_s = 0
[tls]
cert = "$DIR/cert.pem"
key = "$DIR/key.pem"
TOML
"$bin" -c "$DIR/wasmgate.toml" >"$DIR/gateway.log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$ws/ping', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
bash ../shared/tools/autobahn-run.sh "ws://127.0.0.1:$ws/echo" wasmgate
bash ../shared/tools/autobahn-run.sh "wss://127.0.0.1:$wss/echo" wasmgate-wss
