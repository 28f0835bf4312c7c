#!/usr/bin/env bash
# Install (idempotently, only what is missing) the Debian packages the guest build
# and the QEMU reference boot need. Needs root. Used by .ci/run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'guest deps: %s\n' "$*" >&2; }
die() { printf 'guest deps: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/debian.sh
. "$HERE/scripts/lib/debian.sh"
deb_ensure linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils busybox-static qemu-system-x86 passt iproute2
# gvproxy is packaged from Debian 13 (trixie) on, as one binary needing only libc6 (>= 2.34).
deb_ensure_from_pinned_suite trixie gvproxy
log "all installed"
