#!/usr/bin/env bash
# Build (or locate) the tsibox guest kernel.
#
#   scripts/build-kernel.sh [--debug] [--key | --print-path | --force]
#
# Source: Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz).
# Config: `make tinyconfig` + native/kernel/config-fragment (merge_config.sh) +
#         olddefconfig. Patches: native/kernel/patches/*.patch, applied in order.
# Cache:  ${XDG_CACHE_HOME:-$HOME/.cache}/tsibox/kernel/<key>/{vmlinux,bzImage,config}
#         where <key> hashes the recipe version, the source package version, the
#         fragment and the patches (see cache_key below; src/guest/kernel.ts computes
#         the same key).
# Work:   ${TSIBOX_WORK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tsibox/work}/kernel-<key>
#
# Progress goes to stderr ("tsibox-kernel: ..."); the only stdout line is the cache
# directory holding vmlinux and bzImage. A cache hit returns at once.
#
# --debug: the debug variant (KASAN, lockdep, hung-task and soft-lockup detectors,
#         list and object debugging) for test/e2e/tsi-stress.test.ts: the same recipe
#         with native/kernel/config-fragment-debug merged after config-fragment. Its
#         key is "debug-" + 16 hex digits over the same lines with the recipe
#         "<recipe>+debug" and one more line, "fragment-debug <sha256>", so it has a
#         cache directory of its own and never replaces the normal kernel.
set -euo pipefail

RECIPE=tsibox-kernel-v1
PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRAGMENT="$HERE/native/kernel/config-fragment"
DEBUG_FRAGMENT="$HERE/native/kernel/config-fragment-debug"
PATCHDIR="$HERE/native/kernel/patches"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/tsibox"
WORK_ROOT="${TSIBOX_WORK_DIR:-$CACHE_ROOT/work}"
JOBS="${TSIBOX_KERNEL_JOBS:-$(nproc)}"

log() { printf 'tsibox-kernel: %s\n' "$*" >&2; }
die() { printf 'tsibox-kernel: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib/debian.sh
. "$HERE/scripts/lib/debian.sh"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# The key: sha256 over these lines, first 16 hex digits.
#   <recipe>\nsource <pkg> <version>\nfragment <sha256>\n[patch <name> <sha256>\n]...
# The debug variant: "debug-" + the same over <recipe>+debug, ..., fragment-debug <sha256>.
cache_key() {
  local version f
  version="$(dpkg-query -W -f='${Version}' "$PKG")"
  if [ "$debug" -eq 1 ]; then printf 'debug-'; fi
  {
    if [ "$debug" -eq 1 ]; then printf '%s+debug\n' "$RECIPE"; else printf '%s\n' "$RECIPE"; fi
    printf 'source %s %s\n' "$PKG" "$version"
    printf 'fragment %s\n' "$(sha "$FRAGMENT")"
    for f in $(patches); do printf 'patch %s %s\n' "$(basename "$f")" "$(sha "$f")"; done
    if [ "$debug" -eq 1 ]; then printf 'fragment-debug %s\n' "$(sha "$DEBUG_FRAGMENT")"; fi
  } | sha256sum | cut -c1-16
}

patches() { [ -d "$PATCHDIR" ] && find "$PATCHDIR" -maxdepth 1 -name '*.patch' -type f | LC_ALL=C sort || true; }

mode=build
debug=0
# --debug may come before or after the mode option; anything else is as before.
if [ "${1:-}" = --debug ]; then debug=1; shift; elif [ "${2:-}" = --debug ]; then debug=1; set -- "$1"; fi
case "${1:-}" in
  --key) mode=key ;;
  --print-path) mode=print ;;
  --force) mode=force ;;
  '') ;;
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option $1" ;;
esac
if [ "$debug" -eq 1 ]; then
  [ -f "$DEBUG_FRAGMENT" ] || die "$DEBUG_FRAGMENT missing"
  FRAGMENTS=("$FRAGMENT" "$DEBUG_FRAGMENT")
  variant=" (debug)"
else
  FRAGMENTS=("$FRAGMENT")
  variant=""
fi

if [ "$mode" = key ] || [ "$mode" = print ]; then
  deb_installed "$PKG" \
    || die "$PKG is not installed; run scripts/build-kernel.sh"
  key="$(cache_key)"
  if [ "$mode" = key ]; then echo "$key"; else echo "$CACHE_ROOT/kernel/$key"; fi
  exit 0
fi

deb_ensure "$PKG" build-essential bc bison flex libelf-dev libssl-dev xz-utils
[ -f "$TARBALL" ] || die "$TARBALL missing although $PKG is installed"

key="$(cache_key)"
OUT="$CACHE_ROOT/kernel/$key"
if [ "$mode" != force ] && [ -s "$OUT/vmlinux" ] && [ -s "$OUT/bzImage" ]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE_ROOT/kernel" "$WORK_ROOT"
# One build per key at a time; a second caller waits and then hits the cache.
exec 9>"$CACHE_ROOT/kernel/.lock-$key"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
  if [ "$mode" != force ] && [ -s "$OUT/vmlinux" ] && [ -s "$OUT/bzImage" ]; then
    log "cached: $OUT"; echo "$OUT"; exit 0
  fi
fi

start=$(date +%s)
WORK="$WORK_ROOT/kernel-$key"
SRC="$WORK/linux"
LOG="$WORK/build.log"
rm -rf "$WORK"
mkdir -p "$WORK"
log "building kernel$variant $key ($PKG $(dpkg-query -W -f='${Version}' "$PKG"), $JOBS jobs)"
log "work dir $WORK (full log: $LOG)"

log "[1/5] unpacking $TARBALL"
mkdir -p "$SRC"
tar -xf "$TARBALL" -C "$SRC" --strip-components=1

n=0
for p in $(patches); do
  n=$((n + 1))
  log "[2/5] applying patch $(basename "$p")"
  patch -d "$SRC" -p1 --forward --batch <"$p" >>"$LOG" 2>&1 || die "patch $(basename "$p") failed (see $LOG)"
done
[ "$n" -eq 0 ] && log "[2/5] no patches"

if [ "$debug" -eq 1 ]; then
  log "[3/5] configuring (tinyconfig + config-fragment + config-fragment-debug)"
else
  log "[3/5] configuring (tinyconfig + config-fragment)"
fi
make -C "$SRC" ARCH=x86_64 tinyconfig >>"$LOG" 2>&1 || die "make tinyconfig failed (see $LOG)"
(cd "$SRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}") >>"$LOG" 2>&1 \
  || die "merge_config.sh failed (see $LOG)"
make -C "$SRC" ARCH=x86_64 olddefconfig >>"$LOG" 2>&1 || die "make olddefconfig failed (see $LOG)"

# Every option the fragments ask for must have survived olddefconfig (a later
# fragment's line for an option wins over an earlier one's, as in merge_config.sh).
bad=0
later=()
for ((i = ${#FRAGMENTS[@]} - 1; i >= 0; i--)); do
  frag="${FRAGMENTS[$i]}"
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        opt="${line%%=*}"
        [ "${#later[@]}" -gt 0 ] && grep -qE "^(# )?$opt[= ]" "${later[@]}" && continue
        grep -qxF "$line" "$SRC/.config" || { log "config: wanted '$line', got '$(grep -E "^(# )?$opt[= ]" "$SRC/.config" || echo unset)'"; bad=1; } ;;
      '# CONFIG_'*' is not set')
        opt="${line#\# }"; opt="${opt%% *}"
        [ "${#later[@]}" -gt 0 ] && grep -qE "^(# )?$opt[= ]" "${later[@]}" && continue
        grep -qE "^$opt=" "$SRC/.config" && { log "config: wanted '$line', got '$(grep -E "^$opt=" "$SRC/.config")'"; bad=1; } ;;
    esac
  done <"$frag"
  later+=("$frag")
done
[ "$bad" -eq 0 ] || die "config fragment not satisfied (dependencies missing?)"

log "[4/5] compiling (make -j$JOBS vmlinux bzImage); this takes a few minutes"
set +e
make -C "$SRC" ARCH=x86_64 -j"$JOBS" vmlinux bzImage 2>&1 | tee -a "$LOG" | awk -v t0="$start" '
  /^  (CC|AS|AR|LD)/ { n++; if (n % 100 == 0) { printf "tsibox-kernel:       %d objects, %ds\n", n, systime() - t0 > "/dev/stderr"; fflush("/dev/stderr") } }
  END { printf "tsibox-kernel:       %d objects done\n", n > "/dev/stderr" }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  tail -n 30 "$LOG" >&2
  die "kernel build failed (see $LOG)"
fi

log "[5/5] installing into $OUT"
TMP="$CACHE_ROOT/kernel/.tmp-$key-$$"
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$SRC/vmlinux" "$TMP/vmlinux"
cp "$SRC/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$SRC/.config" "$TMP/config"
cp "$SRC/System.map" "$TMP/System.map"
{
  echo "key=$key"
  if [ "$debug" -eq 1 ]; then echo "recipe=$RECIPE+debug"; else echo "recipe=$RECIPE"; fi
  echo "source=$PKG $(dpkg-query -W -f='${Version}' "$PKG")"
  echo "kernelrelease=$(make -s -C "$SRC" ARCH=x86_64 kernelrelease 2>/dev/null)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$(( $(date +%s) - start ))"
  for p in $(patches); do echo "patch=$(basename "$p")"; done
} >"$TMP/build-info"
rm -rf "$OUT"
mv "$TMP" "$OUT"
if [ -z "${TSIBOX_KEEP_WORK:-}" ]; then rm -rf "$WORK"; fi
log "done in $(( $(date +%s) - start ))s: vmlinux $(stat -c %s "$OUT/vmlinux") bytes, bzImage $(stat -c %s "$OUT/bzImage") bytes"
echo "$OUT"
