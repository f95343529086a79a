#!/bin/sh
# Benchmark of the hybrid GRUB loader (issue 15), in one run on one machine:
#  1. the build time GRUB's BIOS stage and the signed EFI binaries add:
#     debian-12 built with `boot.loader: grub` and with `systemd-boot`
#     (raw only, warm package cache, RUNS builds each, alternating);
#  2. boot time to the login prompt under each firmware (TCG, 2 vCPUs):
#     the grub image booted RUNS times under bios, uefi and secureboot.
# Needs root and scripts/deps/builder.sh. Usage: scripts/bench-firmware.sh [OUT]
set -eu
cd "$(dirname "$0")/.."
out=${1:-/var/tmp/bootpatch-bench-firmware}
runs=${RUNS:-3}
bootpatch=$(scripts/build-bootpatch)
cargo build --quiet --locked --release -p builder
builder="$PWD/target/release/builder"
mkdir -p "$out"
sed -e 's/^name: debian-12$/name: debian-12-systemd-boot/' \
    -e 's/^  loader: grub$/  loader: systemd-boot/' images/debian-12.yaml > "$out/systemd-boot.yaml"
cp images/debian-12.yaml "$out/grub.yaml"
now() { date +%s.%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Warm the package cache for both package sets (not timed).
for v in grub systemd-boot; do
    "$builder" build "$out/$v.yaml" --quiet --formats raw --out "$out/$v" --bootpatch "$bootpatch"
done
: > "$out/build-grub.txt"; : > "$out/build-systemd-boot.txt"
for i in $(seq "$runs"); do
    for v in grub systemd-boot; do
        t0=$(now)
        "$builder" build "$out/$v.yaml" --quiet --formats raw --out "$out/$v" --bootpatch "$bootpatch"
        awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }' >> "$out/build-$v.txt"
    done
done
echo "build (raw only, warm cache), median of $runs, seconds (and the last build's steps):"
for v in grub systemd-boot; do
    printf '  %-13s %6.1f   ' "$v" "$(median < "$out/build-$v.txt")"
    python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(", ".join(f"{s} {t:.1f}" for s, t in m["timings"]))' \
        "$out/$v/manifest.json"
done
echo "boot to login: (TCG, 2 vCPUs, 1 GiB), median of $runs, seconds:"
for fw in bios uefi secureboot; do
    : > "$out/boot-$fw.txt"
    for i in $(seq "$runs"); do
        t0=$(now)
        "$builder" boot "$out/grub/disk.raw" --firmware "$fw" --timeout 600 \
            --serial "$out/boot-$fw.log" --until "login:" 2>/dev/null
        awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }' >> "$out/boot-$fw.txt"
    done
    printf '  %-11s %6.1f\n' "$fw" "$(median < "$out/boot-$fw.txt")"
done
