#!/bin/sh
# Installs, idempotently, what bootpatch's tests and benchmark need:
#   mmdebstrap, arch-test  - the real Debian root the patch engine is tested in
#   apt-utils              - apt-ftparchive, for the signed test repository
#   gnupg                  - generates the test signing key and signs with it
#   util-linux             - unshare (private mount namespace for the root)
#   hyperfine, time        - the benchmark (time -v for peak RSS)
set -eu
[ "$(id -u)" = 0 ] || { echo "bootpatch.sh: run as root" >&2; exit 1; }

need=""
for pkg in mmdebstrap arch-test apt-utils gnupg util-linux hyperfine time python3; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need="$need $pkg"
    fi
done
[ -n "$need" ] || exit 0
echo "bootpatch deps: installing$need"
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
