#!/usr/bin/env bash
# Install (idempotently, only what is missing) the Debian packages the guest build
# and the QEMU reference boot need. Needs root. Used by CI before `npm run test:boot`.
set -euo pipefail
PKGS=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils busybox-static qemu-system-x86)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "guest deps: all installed" >&2; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "guest deps: missing ${missing[*]}; run as root" >&2; exit 1; }
echo "guest deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
  || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
