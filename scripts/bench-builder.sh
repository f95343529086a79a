#!/bin/sh
# Benchmark of `builder build` for debian-12 with all formats, beside its
# floor (mmdebstrap + mkfs.ext4 -d of the same package set) and the format
# tools, in one run. Needs root and scripts/deps/builder.sh.
# Usage: scripts/bench-builder.sh [SPEC] [OUT]
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-builder}"
spec=${1:-images/debian-12.yaml}
out=${2:-/var/tmp/bootpatch-bench}
bootpatch=$(scripts/build-bootpatch)
cargo build --quiet --release -p builder
# Warm the package cache (not timed): later builds download no .deb.
"$CARGO_TARGET_DIR/release/builder" build "$spec" --quiet --formats raw \
    --out "$out/warm" --bootpatch "$bootpatch"
rm -rf "$out/warm"
cargo bench --quiet -p builder --bench build -- "$PWD/$spec" "$out" "$bootpatch"
