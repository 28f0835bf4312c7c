#!/usr/bin/env bash
# One short check for a machine that may have hardware KVM: what /dev/kvm is there,
# whether guest ring-0 code runs natively (ring-0 vs ring-3 loop), what an exit costs,
# and — when node and a guest kernel are available — what a real Linux boot costs
# under our engine. Prints plain "key: value" lines; never fails the caller.
#
# Usage: bash scripts/hw-kvm-check.sh [--boots N]
# Looks for prebuilt pieces in native/build (make -C native) and in $TSIBOX_CARRY
# (default .carry/: cvmm-static, node, bzImage, initramfs) so it can run on a machine
# with no compiler and no network.
set -u
cd "$(dirname "$0")/.."
BOOTS=10
[ "${1:-}" = "--boots" ] && BOOTS="${2:-10}"
CARRY="${TSIBOX_CARRY:-.carry}"
say() { printf '%s: %s\n' "$1" "$2"; }

say host "$(uname -srm)"
say cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
say cores "$(nproc)"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
virt=none
case "$flags" in *" vmx"*) virt=vmx ;; *" svm"*) virt=svm ;; esac
say cpu-virtualization-flag "$virt"
case "$flags" in *" hypervisor"*) say running-under-hypervisor yes ;; *) say running-under-hypervisor no ;; esac
say kvm-modules "$(ls /sys/module 2>/dev/null | grep -E '^kvm' | tr '\n' ' ')"
if [ -e /dev/kvm ]; then
  say dev-kvm "$(ls -l /dev/kvm)"
else
  say dev-kvm "absent"
  say verdict "no KVM on this machine: nothing more to measure"
  exit 0
fi

CVMM=""
for c in "$CARRY/cvmm-static" native/build/bench/cvmm; do [ -x "$c" ] && { CVMM="$c"; break; }; done
GUESTS=""
for g in "$CARRY/testguest" native/build/testguest; do [ -f "$g/loop.bin" ] && { GUESTS="$g"; break; }; done
if [ -z "$CVMM" ] || [ -z "$GUESTS" ]; then
  if command -v make >/dev/null && command -v gcc >/dev/null; then make -s -C native >/dev/null 2>&1; fi
  [ -x native/build/bench/cvmm ] && CVMM=native/build/bench/cvmm
  [ -f native/build/testguest/loop.bin ] && GUESTS=native/build/testguest
fi
if [ -n "$CVMM" ] && [ -n "$GUESTS" ]; then
  say cvmm-loop-cpl0 "$(timeout 60 "$CVMM" --cpl 0 --param 200000 "$GUESTS/loop.bin" loop 2>&1 | tail -1)"
  say cvmm-loop-cpl3 "$(timeout 60 "$CVMM" --cpl 3 --param 200000000 "$GUESTS/loop.bin" loop 2>&1 | tail -1)"
  say cvmm-exits-cpl3 "$(timeout 60 "$CVMM" --cpl 3 --param 200000 "$GUESTS/bench-exits.bin" exits 2>&1 | tail -1)"
  say cvmm-exits-cpl0 "$(timeout 60 "$CVMM" --cpl 0 --param 200000 "$GUESTS/bench-exits.bin" exits 2>&1 | tail -1)"
  say cvmm-ioeventfd "$(timeout 60 "$CVMM" --param 20000 "$GUESTS/bench-ioeventfd.bin" ioeventfd 2>&1 | tail -1)"
else
  say cvmm "not available (no prebuilt cvmm and no compiler)"
fi

NODE=""
if command -v node >/dev/null; then NODE=node
elif [ -f "$CARRY/node.xz" ]; then xz -dc "$CARRY/node.xz" > /tmp/tsibox-node && chmod +x /tmp/tsibox-node && NODE=/tmp/tsibox-node
elif [ -x "$CARRY/node" ]; then NODE="$CARRY/node"; fi
# A production node_modules (koffi, pino, undici) packed by scripts/pack-device-carry.sh.
[ -d node_modules/koffi ] || { [ -f "$CARRY/node_modules.tar" ] && tar -xf "$CARRY/node_modules.tar"; }
[ -d dist ] || { [ -f "$CARRY/dist.tar" ] && tar -xf "$CARRY/dist.tar"; }
if [ -z "$NODE" ]; then
  say node "absent: the TypeScript engine checks are skipped"
  exit 0
fi
say node "$("$NODE" --version)"
if [ -f dist/src/cli/main.js ]; then
  say doctor "$(timeout 60 "$NODE" dist/src/cli/main.js doctor 2>&1 | tr '\n' ' ' | head -c 2000)"
  for b in exits ioeventfd virtqueue; do
    timeout 120 "$NODE" dist/src/cli/main.js bench "$b" --quiet 2>&1 | sed "s/^/bench-$b: /"
  done
fi
if [ -f dist/scripts/boot-check.js ]; then
  timeout 300 "$NODE" dist/scripts/boot-check.js --boots "$BOOTS" 2>&1 | tail -20
else
  say linux-boot "skipped: dist/scripts/boot-check.js not built (needs the Linux loader)"
fi
