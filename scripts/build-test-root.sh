#!/usr/bin/env bash
# Build (or locate) the Debian test root: a minimal Debian 12 (bookworm) root directory
# made by debootstrap (--variant=minbase) with python3, curl and iperf3, for tests that
# need real guest programs. Needs root to build (debootstrap: chroot, mknod).
#
#   scripts/build-test-root.sh [--key | --print-path | --force]
#
# Mirror: the first Debian archive URI that serves the suite in /etc/apt/sources.list{,.d}
#         (TSIBOX_DEBIAN_MIRROR overrides; http://deb.debian.org/debian when none is found).
# Cache:  ${XDG_CACHE_HOME:-$HOME/.cache}/tsibox/test-root/<key>/{root/,build-info}
#         where <key> hashes the recipe version, suite, variant, architecture and
#         package list (not the mirror: any mirror of the suite gives the same root).
# Progress goes to stderr ("tsibox-test-root: ..."); the only stdout line is the path
# of the root directory. A cache hit returns at once. A failed build leaves nothing:
# the root is built in a temporary directory next to the cache and renamed at the end.
set -euo pipefail

# Bump when the steps below change what ends up in the root.
RECIPE=tsibox-test-root-v1
SUITE=bookworm
VARIANT=minbase
# No ca-certificates: tests talk to local servers; it would add openssl and ~1 MB.
INCLUDE=python3,curl,iperf3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/tsibox"

log() { printf 'tsibox-test-root: %s\n' "$*" >&2; }
die() { printf 'tsibox-test-root: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib/debian.sh
. "$HERE/scripts/lib/debian.sh"

arch() { dpkg --print-architecture; }

# The key: sha256 over these lines, first 16 hex digits.
#   <recipe>\nsuite <suite>\nvariant <variant>\narch <arch>\ninclude <list>\n
cache_key() {
  printf '%s\nsuite %s\nvariant %s\narch %s\ninclude %s\n' "$RECIPE" "$SUITE" "$VARIANT" "$(arch)" "$INCLUDE" \
    | sha256sum | cut -c1-16
}

# The mirror apt already uses for $SUITE (one-line and deb822 sources both).
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      /^[ \t]*#/ { next }
      /^deb[ \t]/ {                     # deb [opts] URI suite components...
        i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
        next
      }
      /^[ \t]*$/ { if (uri != "" && hit) { print uri; exit } uri = ""; hit = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == suite) hit = 1 }
      END { if (uri != "" && hit) print uri }
    ' "$f" | head -n1
  done | head -n1
}

# Unmount whatever debootstrap left mounted under $1 (proc, sys, dev/pts), deepest first.
unmount_under() {
  local m
  awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

mode=build
case "${1:-}" in
  --key) mode=key ;;
  --print-path) mode=print ;;
  --force) mode=force ;;
  '') ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option $1" ;;
esac

key="$(cache_key)"
OUT="$CACHE_ROOT/test-root/$key"
if [ "$mode" = key ]; then echo "$key"; exit 0; fi
if [ "$mode" = print ]; then echo "$OUT/root"; exit 0; fi

# A complete root has build-info (written last, before the rename).
cached() { [ -s "$OUT/build-info" ] && [ -x "$OUT/root/usr/bin/python3" ]; }
if [ "$mode" != force ] && cached; then
  log "cached: $OUT/root"
  echo "$OUT/root"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "building the test root needs root (debootstrap chroots and makes device nodes)"
deb_ensure debootstrap
MIRROR="${TSIBOX_DEBIAN_MIRROR:-$(find_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$CACHE_ROOT/test-root"
# One build per key at a time; a second caller waits and then hits the cache.
exec 9>"$CACHE_ROOT/test-root/.lock-$key"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
  if [ "$mode" != force ] && cached; then log "cached: $OUT/root"; echo "$OUT/root"; exit 0; fi
fi

# Removes a (half-built) tree: unmount first, and --one-file-system so that rm never
# follows a mount that survived into the host's /proc, /sys or /dev.
remove_tree() {
  [ -e "$1" ] || return 0
  unmount_under "$1"
  rm -rf --one-file-system "$1"
}
TMP="$CACHE_ROOT/test-root/.tmp-$key-$$"
trap 'remove_tree "$TMP"' EXIT
# Leftovers of a build that was killed (we hold the lock, so none is running).
for stale in "$CACHE_ROOT/test-root/.tmp-$key-"*; do remove_tree "$stale"; done
mkdir -p "$TMP"

start=$(date +%s)
LOG="$TMP/debootstrap.log"
log "building test root $key ($SUITE, $VARIANT, $INCLUDE) from $MIRROR"
log "[1/3] debootstrap (a minute or two; log: $LOG while it runs)"
if ! debootstrap --variant="$VARIANT" --include="$INCLUDE" --arch="$(arch)" \
  "$SUITE" "$TMP/root" "$MIRROR" >"$LOG" 2>&1; then
  tail -n 20 "$LOG" >&2
  [ -f "$TMP/root/debootstrap/debootstrap.log" ] && tail -n 20 "$TMP/root/debootstrap/debootstrap.log" >&2
  die "debootstrap failed"
fi
unmount_under "$TMP/root"

log "[2/3] shrinking (apt caches and lists, docs, man pages, locales)"
R="$TMP/root"
rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/var/cache/debconf/*-old \
  "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/lintian "$R"/usr/share/linda \
  "$R"/var/log/*.log "$R"/var/log/apt/* "$R"/debootstrap
# Docs go, licences stay (they are small and the root may be passed around).
find "$R/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
find "$R" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} +
# The host's identity must not leak into the guest; init sets hostname and resolv.conf.
printf 'tsibox\n' >"$R/etc/hostname"
: >"$R/etc/resolv.conf"

for b in usr/bin/python3 usr/bin/curl usr/bin/iperf3; do
  [ -x "$R/$b" ] || die "/$b missing from the root"
done

log "[3/3] installing into $OUT"
size_kib=$(du -sk --one-file-system "$R" | cut -f1)
{
  echo "key=$key"
  echo "recipe=$RECIPE"
  echo "suite=$SUITE"
  echo "variant=$VARIANT"
  echo "include=$INCLUDE"
  echo "mirror=$MIRROR"
  echo "debootstrap=$(dpkg-query -W -f='${Version}' debootstrap)"
  echo "packages=$(chroot "$R" dpkg-query -W -f='.\n' | wc -l)"
  echo "size_kib=$size_kib"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$(($(date +%s) - start))"
} >"$TMP/build-info"
rm -f "$LOG"
# Swap in: the old root (with --force) moves aside first, so $OUT is never half-written.
if [ -e "$OUT" ]; then
  mv "$OUT" "$TMP.old"
  remove_tree "$TMP.old"
fi
mv "$TMP" "$OUT"
log "done in $(($(date +%s) - start))s: $((size_kib / 1024)) MiB, $(grep '^packages=' "$OUT/build-info" | cut -d= -f2) packages"
echo "$OUT/root"
