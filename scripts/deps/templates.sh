#!/bin/sh
# Installs the tools the cloud-init template and seed tests need:
#   cloud-init  - `cloud-init schema -c FILE`, the real user-data validator
#   xorriso     - writes (and reads back) the NoCloud ISO 9660 seed
#   genisoimage - isoinfo, an independent reader of the seed ISO
#   mtools      - the vfat seed variant (mformat, mcopy, mdir)
#   dosfstools  - mkfs.vfat, for the vfat seed variant
# Idempotent: installs only what is missing. Run as root (or with sudo).
set -eu

need=""
for pkg in cloud-init xorriso genisoimage mtools dosfstools; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need="$need $pkg"
    fi
done

if [ -z "$need" ]; then
    echo "templates deps: all present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "templates deps: installing$need"
$SUDO apt-get update -qq
# cloud-init's recommends pull in network daemons we do not want on a build host.
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
