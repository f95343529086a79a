#!/bin/sh
# Installs, idempotently, every Debian package that `builder build|verify|boot`
# and its tests need on the build host.
#
# qemu-utils on these hosts comes from bookworm-backports, and
# qemu-system-x86 must come from the same suite. The backports suite is added
# with the same mirror URI as the host's existing Debian entries, read from
# its own apt sources at run time: no host name is written into the repo.
set -eu

[ "$(id -u)" = 0 ] || { echo "builder.sh: run as root" >&2; exit 1; }

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
list=/etc/apt/sources.list.d/builder-backports.sources

# First URI of the first deb822 stanza that lists "$codename" as a suite.
host_mirror() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v want="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; hit = 0; key = ""
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^#/) continue
                    if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uri = u[1] }
                    if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == want) hit = 1 }
                    if (line ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", line); key = line }
                }
                if (hit && uri != "") { print uri " " key; exit }
            }' "$f"
    done | head -n1
    if [ -r /etc/apt/sources.list ]; then
        awk -v want="$codename" '$1 == "deb" && $0 !~ /^#/ {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == want) { print $i; exit } }' /etc/apt/sources.list
    fi
}

need_update=0
if [ "$codename" = bookworm ] && ! grep -qs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; then
    set -- $(host_mirror | head -n1)
    uri=${1:-}
    key=${2:-/usr/share/keyrings/debian-archive-keyring.gpg}
    [ -n "$uri" ] || { echo "builder.sh: no $codename entry in the host's apt sources" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$codename" "$key" >"$list"
    need_update=1
fi

# skopeo and umoci: independent readers of the agent's OCI image archive (tests).
pkgs="mmdebstrap e2fsprogs mtools dosfstools fdisk gdisk ovmf qemu-utils apt-utils dpkg-dev xorriso gzip tar diffutils skopeo umoci"
missing=""
for p in $pkgs qemu-system-x86; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

export DEBIAN_FRONTEND=noninteractive
if [ "$need_update" = 1 ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
    apt-get update -q
fi
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $pkgs
if [ "$codename" = bookworm ]; then
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
else
    apt-get install -y -q --no-install-recommends qemu-system-x86
fi
