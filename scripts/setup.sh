#!/usr/bin/env bash
# What `npm start` and `npm test` need, set up when missing: idempotent, and quick when
# everything is there. Debian packages (as root, or through sudo when it needs no
# password; otherwise it says what to run), npm packages, the TypeScript and native
# builds, the guest kernel (the first build takes about 4 minutes on 2 cores; progress
# on stderr) and the busybox root. Caches live in ${XDG_CACHE_HOME:-~/.cache}/tsibox.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'tsibox setup: %s\n' "$*" >&2; }

if ! bash scripts/install-guest-deps.sh --check 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing Debian packages (QEMU, passt, gvproxy, the kernel source and build tools)"
    bash scripts/install-guest-deps.sh
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    say "installing Debian packages with sudo (QEMU, passt, gvproxy, the kernel source and build tools)"
    sudo bash scripts/install-guest-deps.sh
  else
    bash scripts/install-guest-deps.sh --check || true
    say "these Debian packages are needed and installing them needs root: run"
    say "    sudo bash scripts/install-guest-deps.sh"
    say "once, then this command again"
    exit 1
  fi
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund >&2
fi
say "building (TypeScript, native)"
npm run -s build >&2
say "guest kernel and root (cached; the first kernel build takes about 4 minutes)"
bash scripts/build-kernel.sh > /dev/null
bash scripts/build-initramfs.sh > /dev/null
say "ready"
