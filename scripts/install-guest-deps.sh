#!/usr/bin/env bash
# Install (idempotently, only what is missing) the Debian packages the guest build
# and the QEMU reference boot need. Needs root (--check: says what is missing, no
# root needed). Used by .ci/run and scripts/setup.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'guest deps: %s\n' "$*" >&2; }
die() { printf 'guest deps: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/debian.sh
. "$HERE/scripts/lib/debian.sh"
# tmux: test/e2e/tty.test.ts drives `tsibox run -t` through a real terminal with it.
# debootstrap: scripts/build-test-root.sh makes the Debian test root (python3, curl, iperf3) with it.
# iperf3: the host-side server and baseline client of `tsibox bench iperf`.
# qemu-utils: test/e2e/disks.test.ts makes and reads qcow2 images with qemu-img (qemu-storage-daemon itself is in qemu-system-common).
# podman, conmon, runc, containerd, containernetworking-plugins, golang-github-containers-common, iptables:
#   the container engines test/e2e/oci-podman.test.ts and oci-containerd.test.ts drive tsibox-oci with
#   (rootful; CNI networking, netavark is only recommended and stays out).
# python3: test/oci/console.test.ts receives the console master with it (socket.recv_fds, 3.9+).
PACKAGES=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils busybox-static qemu-system-x86 passt iproute2 tmux debootstrap iperf3 qemu-utils
  podman conmon runc containerd containernetworking-plugins golang-github-containers-common iptables python3)
# --check: exit 1 (naming them) when any is missing; installs nothing, needs no root.
if [ "${1:-}" = --check ]; then
  missing=()
  for p in "${PACKAGES[@]}" gvproxy; do deb_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && exit 0
  log "missing: ${missing[*]}"
  exit 1
fi
deb_ensure "${PACKAGES[@]}"
# gvproxy is packaged from Debian 13 (trixie) on, as one binary needing only libc6 (>= 2.34).
deb_ensure_from_pinned_suite trixie gvproxy
log "all installed"
