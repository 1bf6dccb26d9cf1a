#!/usr/bin/env bash
# Builds the C templates into build/router.wasm and build/handler.wasm: bindings from the WIT
# with wit-bindgen's C generator, compiled against wasi-libc by Debian's clang 14, linked into
# a component by wasm-component-ld (the linker wasi-sdk's `wasm32-wasip2` target uses; it
# ships with the Rust toolchain). What is missing is installed, pinned: wit-bindgen-cli 0.57.1
# from crates.io (`cargo install`, ~4 min once), clang-14, lld-14, wasi-libc and the wasm32
# compiler-rt builtins from Debian (apt-get, as root).
set -euo pipefail
cd "$(dirname "$0")"
WIT_BINDGEN_VERSION=0.57.1
DEBIAN_PACKAGES="clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32"

if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "c/build.sh: install $DEBIAN_PACKAGES (apt-get, as root) first" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $DEBIAN_PACKAGES >/dev/null
fi
if ! wit-bindgen --version 2>/dev/null | grep -q " $WIT_BINDGEN_VERSION"; then
    cargo install --quiet --locked --no-default-features --features c "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
fi
# wasm-component-ld runs wasm-ld, then turns the core module into a component: the world's
# type information comes from the bindings' `*_component_type.o`, and the wasi_snapshot_preview1
# imports of wasi-libc are adapted to WASI 0.2 with the reactor adapter it embeds.
COMPONENT_LD=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/wasm-component-ld
[ -x "$COMPONENT_LD" ] || { echo "c/build.sh: $COMPONENT_LD missing (Rust >= 1.82 ships it)" >&2; exit 1; }

WIT=../../../wit
mkdir -p build
for script in router handler; do
    wit-bindgen c "$WIT" --world "$script-script" --out-dir "build/$script" >/dev/null
    clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -I "build/$script" "$script.c" "build/$script/${script}_script.c" \
        "build/$script/${script}_script_component_type.o" \
        -fuse-ld="$COMPONENT_LD" -Wl,--wasm-ld-path=/usr/bin/wasm-ld-14 \
        -o "build/$script.wasm"
done
ls -l build/*.wasm
