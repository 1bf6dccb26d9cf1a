#!/usr/bin/env bash
# Builds the JavaScript templates into build/router.wasm and build/handler.wasm with
# componentize-js (pinned in package-lock.json, installed with `npm ci` when missing), and
# regenerates the TypeScript declarations in types/ from the WIT.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@bytecodealliance/componentize-js ]; then
    npm ci --no-audit --no-fund
fi
npm run --silent types >/dev/null
npm run --silent build
