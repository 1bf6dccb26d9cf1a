#!/usr/bin/env bash
# Installs the benchmark peers (loopback only; docs/benchmarks.md): Node `ws` from npm, nginx
# (the WebSocket proxy of the relay comparison) from Debian. The load generator starts each
# peer itself, on free loopback ports, with its own config; nothing here is left running.
set -euo pipefail
cd "$(dirname "$0")"
npm install --prefix node-ws --no-audit --no-fund --loglevel=error
if ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null
    # The package may start a system nginx on port 80; the benchmark runs its own.
    (command -v service >/dev/null && service nginx stop >/dev/null 2>&1) || true
fi
echo "peers ready: node-ws ($(node -p "require('./node-ws/node_modules/ws/package.json').version")), $(nginx -v 2>&1)"
