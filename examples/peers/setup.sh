#!/usr/bin/env bash
# Installs the benchmark peers (loopback only; docs/benchmarks.md): Node `ws` from npm.
set -euo pipefail
cd "$(dirname "$0")"
npm install --prefix node-ws --no-audit --no-fund --loglevel=error
echo "peers ready: node-ws ($(node -p "require('./node-ws/node_modules/ws/package.json').version"))"
