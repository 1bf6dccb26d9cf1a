#!/usr/bin/env bash
# Installs the benchmark peers (loopback only; docs/benchmarks.md): Node `ws` from npm, nginx
# (the WebSocket proxy of the relay comparison) and mosquitto (the MQTT broker of the fan-out
# comparison, WebSocket listener) from Debian. The load generator starts each peer itself, on
# free loopback ports, with its own config; nothing here is left running.
set -euo pipefail
cd "$(dirname "$0")"
npm install --prefix node-ws --no-audit --no-fund --loglevel=error
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v mosquitto >/dev/null || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    # The packages may start system services on ports 80 and 1883; the benchmark runs its own.
    if command -v service >/dev/null; then
        for s in nginx mosquitto; do service "$s" stop >/dev/null 2>&1 || true; done
    fi
fi
echo "peers ready: node-ws ($(node -p "require('./node-ws/node_modules/ws/package.json').version")), $(nginx -v 2>&1), $(mosquitto -h | head -1)"
