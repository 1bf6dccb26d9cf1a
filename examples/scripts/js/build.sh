#!/usr/bin/env bash
# Builds the JavaScript templates into build/router.wasm and build/handler.wasm with
# componentize-js (StarlingMonkey), and build/router-qjs.wasm and build/handler-qjs.wasm with
# componentize-qjs (QuickJS, `--backend-qjs-disable-async`); versions pinned in
# package-lock.json, installed with `npm ci` when missing. Regenerates the TypeScript
# declarations in types/ from the WIT.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@bytecodealliance/componentize-js ] || [ ! -d node_modules/componentize-qjs ]; then
    npm ci --no-audit --no-fund
fi
npm run --silent types >/dev/null
npm run --silent build
# QuickJS (componentize-qjs through jco's CLI, which reads the WIT from inside this folder):
# the sync build deploys; the default (async) one is kept to show that it is refused.
rm -rf .wit && cp -r ../../../wit .wit
npm run --silent build-qjs
rm -rf .wit
