#!/bin/sh
# Builds herd as one statically linked x86_64 binary (glibc, crt-static) and checks
# that it is static and runs.
#
#   packaging/build-static.sh [OUT]      # OUT defaults to packaging/out/herd
#
# Only the host target is needed (x86_64-unknown-linux-gnu; no musl target). The
# explicit --target keeps build scripts and proc-macros dynamic: RUSTFLAGS then apply
# to the target only, and a static proc-macro cannot be loaded by rustc.
#
# getrandom 0.3/0.4 (under rand) find getrandom(2) with dlsym(), which a static glibc
# binary cannot do; they would fall back to /dev/urandom and fail where there is no
# /dev (a bare chroot). The linux_getrandom backend makes the system call directly.
# CARGO_TARGET_DIR is honoured as usual.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$here/out/herd}
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}

cd "$root"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
    cargo build --release --locked -p herd --target "$target"

bin=$target_dir/$target/release/herd
mkdir -p "$(dirname "$out")"
cp "$bin" "$out"
strip "$out" 2>/dev/null || echo "build-static: strip not found, keeping symbols" >&2

fail() {
    echo "build-static: $*" >&2
    exit 1
}

# 1. The ELF has no interpreter and no dynamic dependencies.
if command -v file >/dev/null; then
    info=$(file -L "$out")
    echo "$info"
    case $info in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) fail "not static: $info" ;;
    esac
fi
if command -v readelf >/dev/null; then
    if readelf -l "$out" | grep -q 'Requesting program interpreter'; then
        fail "$out has a program interpreter"
    fi
    if readelf -d "$out" | grep -q '(NEEDED)'; then
        fail "$out needs shared libraries: $(readelf -d "$out" | grep '(NEEDED)')"
    fi
fi
ldd_out=$(ldd "$out" 2>&1 || true)
echo "ldd: $ldd_out"
case $ldd_out in
*"not a dynamic executable"* | *"statically linked"*) ;;
*) fail "ldd lists libraries: $ldd_out" ;;
esac

# 2. It runs in an empty root: no /lib, no /etc, nothing but itself.
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
    empty=$(mktemp -d)
    trap 'rm -rf "$empty"' EXIT
    cp "$out" "$empty/herd"
    chroot "$empty" /herd --version || fail "$out does not run in an empty root"
    chroot "$empty" /herd init --state /state --name probe --listen 127.0.0.1:7420 \
        >/dev/null || fail "herd init fails in an empty root"
    echo "runs in an empty root (chroot): --version and init"
else
    echo "build-static: not root, skipped the empty-root check" >&2
    "$out" --version
fi

echo "$out: $(du -h "$out" | cut -f1) ($(wc -c <"$out") bytes)"
