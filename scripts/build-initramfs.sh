#!/usr/bin/env bash
# Build (or locate) the default tsibox guest root: a gzip'd newc initramfs holding
# Debian's busybox-static (with applet links) and our init (native/init/init.c) as /init.
#
#   scripts/build-initramfs.sh [--key | --print-path | --force]
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/tsibox/initramfs/<key>/{initramfs.cpio.gz,init}
#        where <key> hashes the recipe version, the busybox-static and libc6-dev
#        versions, the gcc version and the sources in native/init and native/rootfs.
# Progress goes to stderr ("tsibox-initramfs: ..."); the only stdout line is the
# path of initramfs.cpio.gz. A cache hit returns at once.
set -euo pipefail

RECIPE=tsibox-initramfs-v1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INIT_SRC="$HERE/native/init/init.c"
# Every source of init (init.c and its helpers, e.g. dhcp.c/dhcp.h), hashed into the key.
INIT_FILES=("$HERE"/native/init/*.c "$HERE"/native/init/*.h)
MKCPIO_SRC="$HERE/native/rootfs/mkcpio.c"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/tsibox"
BUSYBOX=/bin/busybox

log() { printf 'tsibox-initramfs: %s\n' "$*" >&2; }
die() { printf 'tsibox-initramfs: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib/debian.sh
. "$HERE/scripts/lib/debian.sh"

sha() { sha256sum "$1" | cut -d' ' -f1; }
ver() { dpkg-query -W -f='${Version}' "$1"; }

cache_key() {
  {
    printf '%s\n' "$RECIPE"
    printf 'busybox-static %s\n' "$(ver busybox-static)"
    printf 'libc6-dev %s\n' "$(ver libc6-dev)"
    printf 'gcc %s\n' "$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"
    printf 'init %s\n' "$(sha "$INIT_SRC")"
    for f in "${INIT_FILES[@]}"; do [ "$f" = "$INIT_SRC" ] || printf '%s %s\n' "${f##*/}" "$(sha "$f")"; done
    printf 'mkcpio %s\n' "$(sha "$MKCPIO_SRC")"
  } | sha256sum | cut -c1-16
}

mode=build
case "${1:-}" in
  --key) mode=key ;;
  --print-path) mode=print ;;
  --force) mode=force ;;
  '') ;;
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option $1" ;;
esac

if [ "$mode" = key ] || [ "$mode" = print ]; then
  deb_installed busybox-static && deb_installed libc6-dev || die "busybox-static/libc6-dev not installed; run scripts/build-initramfs.sh"
  key="$(cache_key)"
  if [ "$mode" = key ]; then echo "$key"; else echo "$CACHE_ROOT/initramfs/$key/initramfs.cpio.gz"; fi
  exit 0
fi

deb_ensure busybox-static build-essential
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing although busybox-static is installed"
"$BUSYBOX" --list-full >/dev/null 2>&1 || die "$BUSYBOX is not busybox-static (is the dynamic busybox package installed instead?)"

key="$(cache_key)"
OUT="$CACHE_ROOT/initramfs/$key"
if [ "$mode" != force ] && [ -s "$OUT/initramfs.cpio.gz" ]; then
  log "cached: $OUT/initramfs.cpio.gz"
  echo "$OUT/initramfs.cpio.gz"
  exit 0
fi

mkdir -p "$CACHE_ROOT/initramfs"
exec 9>"$CACHE_ROOT/initramfs/.lock-$key"
flock 9
if [ "$mode" != force ] && [ -s "$OUT/initramfs.cpio.gz" ]; then
  log "cached: $OUT/initramfs.cpio.gz"; echo "$OUT/initramfs.cpio.gz"; exit 0
fi

TMP="$CACHE_ROOT/initramfs/.tmp-$key-$$"
rm -rf "$TMP"
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

log "building initramfs $key (busybox-static $(ver busybox-static))"
log "compiling init (gcc -static -Os)"
gcc -static -Os -s -Wall -Wextra -o "$TMP/init" "$HERE"/native/init/*.c >&2 || die "compiling init failed"
gcc -O2 -Wall -o "$TMP/mkcpio" "$MKCPIO_SRC" >&2 || die "compiling mkcpio failed"

cat >"$TMP/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$TMP/group" <<'GR'
root:x:0:
tty:x:5:
nogroup:x:65534:
GR
cat >"$TMP/hosts" <<'HO'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
HO

log "writing the archive"
{
  for d in bin sbin usr usr/bin usr/sbin etc dev proc sys run root var var/tmp home mnt .tsibox; do
    echo "dir /$d 0755"
  done
  echo "dir /tmp 1777"
  echo "nod /dev/console 0600 c 5 1"
  echo "nod /dev/null 0666 c 1 3"
  echo "file /init 0755 $TMP/init"
  echo "file /bin/busybox 0755 $BUSYBOX"
  echo "file /etc/passwd 0644 $TMP/passwd"
  echo "file /etc/group 0644 $TMP/group"
  echo "file /etc/hosts 0644 $TMP/hosts"
  "$BUSYBOX" --list-full | LC_ALL=C sort | while read -r applet; do
    case "$applet" in bin/busybox|linuxrc|*' '*) continue ;; esac
    echo "slink /$applet /bin/busybox"
  done
} >"$TMP/spec"
"$TMP/mkcpio" <"$TMP/spec" | gzip -n -9 >"$TMP/initramfs.cpio.gz"

{
  echo "key=$key"
  echo "recipe=$RECIPE"
  echo "busybox-static=$(ver busybox-static)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "applets=$(grep -c '^slink' "$TMP/spec")"
} >"$TMP/build-info"
mkdir -p "$OUT.new"
cp "$TMP/initramfs.cpio.gz" "$TMP/init" "$TMP/build-info" "$TMP/spec" "$OUT.new/"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
log "done: $(stat -c %s "$OUT/initramfs.cpio.gz") bytes, $(grep -c '^slink' "$TMP/spec") applet links"
echo "$OUT/initramfs.cpio.gz"
