#!/usr/bin/env bash
# Builds the Python templates into build/router.wasm and build/handler.wasm with
# componentize-py (installed here, pinned, from PyPI, when missing): the toolchain's default
# output, no flags.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.25.1
if ! componentize-py --version 2>/dev/null | grep -q "$VERSION"; then
    python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$VERSION"
fi
WIT=../../../wit
mkdir -p build
componentize-py -d "$WIT" -w router-script componentize router -o build/router.wasm
componentize-py -d "$WIT" -w handler-script componentize handler -o build/handler.wasm
ls -l build/*.wasm
