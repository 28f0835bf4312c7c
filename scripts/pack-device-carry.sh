#!/usr/bin/env bash
# Packs what scripts/hw-kvm-check.sh needs on a machine with no compiler, no npm and
# no network into .carry/ (gitignored): static cvmm, test guests, node (xz), a
# production node_modules and dist/. Run after `npm run build`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/testguest
gcc -O2 -static -o .carry/cvmm-static native/bench/cvmm.c
cp native/build/testguest/*.bin .carry/testguest/
[ -f .carry/node.xz ] || xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > .carry/node.xz
tmp=$(mktemp -d)
cp package.json package-lock.json "$tmp/"
(cd "$tmp" && npm ci --omit=dev --no-audit --no-fund >/dev/null)
tar -C "$tmp" -cf .carry/node_modules.tar node_modules
rm -rf "$tmp"
tar -cf .carry/dist.tar dist native/build/testguest/*.bin native/build/bench/cvmm
du -sh .carry
