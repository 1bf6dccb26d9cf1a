#!/usr/bin/env bash
# Prepares the example Thrift backend: Apache Thrift's Python library from PyPI (pinned, when
# missing) and the Python code the Thrift compiler (Debian's `thrift-compiler`) generates from
# ../../thrift/protoservice.thrift into gen-py/.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.22.0
installed=$(python3 -m pip show thrift 2>/dev/null || true)
if ! grep -qx "Version: $VERSION" <<<"$installed"; then
    python3 -m pip install --quiet --disable-pip-version-check "thrift==$VERSION"
fi
if ! command -v thrift >/dev/null; then
    echo "the Thrift compiler is missing: apt-get install -y thrift-compiler" >&2
    exit 1
fi
rm -rf gen-py.tmp && mkdir gen-py.tmp
thrift --gen py -out gen-py.tmp ../../thrift/protoservice.thrift
rm -rf gen-py && mv gen-py.tmp gen-py
