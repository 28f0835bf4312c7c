#!/usr/bin/env bash
# The nested SVM test host: run ONE command inside a Linux guest, booted by QEMU TCG
# with `-cpu max` (AMD SVM with nested paging emulated), whose kvm_amd module offers a
# /dev/kvm on which guest ring 0 runs natively. This is how the KVM engine is tested
# end to end on machines whose own /dev/kvm emulates guest ring 0 (see DESIGN.md §6).
#
#   scripts/svm-host.sh [options] -- CMD [ARG...]
#
#   --mem MiB        guest RAM (default 2048)
#   --cpus N         guest vCPUs (default 2)
#   --timeout SEC    kill the host after SEC seconds; exit 124
#   --stall SEC      kill the host when its console has been silent for SEC seconds
#                    (it prints a heartbeat every 10 s while alive); exit 124
#   --env NAME=VAL   set NAME in CMD's environment (repeatable); --env NAME copies it
#   --cwd DIR        directory CMD runs in (default: the current one). It must exist
#                    on this machine: the host sees this machine's / read-only.
#   --console        stream the nested host's kernel console to stderr
#   --prepare        only build the cache (kernel, modules, initramfs); boot nothing
#   --check          say on one line whether this host can be used; fetch and boot
#                    nothing (exit 0: "ok: ...", 125: "unavailable: ...")
#   --print-cache    print the cache directory in use and exit
#
# Inside: this machine's / over 9p, read-only (node, node_modules, dist-* are read
# through it); tmpfs on /tmp, /run, /dev/shm; /dev/kvm from kvm_amd; loopback up;
# HOME=TMPDIR=/tmp; PATH as the caller's; XDG_CACHE_HOME = this machine's cache
# directory (read-only), so tsibox finds the guest kernel and initramfs built here;
# TSIBOX_* variables are passed through; SVMHOST=1. Anything that writes must write
# under /tmp. $SVMHOST_OUT is a writable directory whose files are copied to the
# directory named by the caller's SVMHOST_OUT (if set) when the host stops.
# CMD's stdin is /dev/null; its stdout and stderr stream to ours (virtio-serial ports).
#
# Exit status: CMD's; 124 on --timeout; 125 when the host cannot be built or started
# (no QEMU, no kernel package) or stops without reporting a status (its console log is
# printed). Progress and errors go to stderr as "svm-host: ...".
# Environment: SVMHOST_TIMES=1 prints boot and run times; SVMHOST_KERNEL_ARGS adds to
# the kernel command line; SVMHOST_QEMU names the QEMU binary.
#
# Kernel: Debian's linux-image-6.1.0-*-amd64 (what linux-image-amd64 depends on, or
# $SVMHOST_KERNEL_PKG, or the .deb at $SVMHOST_KERNEL_DEB), fetched with
# `apt-get download` and unpacked with dpkg-deb into the cache, never installed.
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/tsibox/svm-host/
#        debs/<pkg>.deb, kernel/<pkg>_<ver>-<k>/{vmlinuz,vmlinux,config,modules/,order},
#        initramfs/<key>.cpio.gz (key: recipe, kernel, busybox, this script's init).
set -euo pipefail

RECIPE=svm-host-v1
CACHE_BASE="${XDG_CACHE_HOME:-$HOME/.cache}"
CACHE="$CACHE_BASE/tsibox/svm-host"
QEMU="${SVMHOST_QEMU:-qemu-system-x86_64}"
BUSYBOX=/bin/busybox
# What the nested host loads, in any order: dependencies are resolved from the .ko files.
MODULES="virtio_pci virtio_console 9pnet_virtio 9p kvm-amd dummy"

log() { printf 'svm-host: %s\n' "$*" >&2; }
die() { printf 'svm-host: error: %s\n' "$*" >&2; exit 125; }

MEM=2048 CPUS=2 TIMEOUT="" STALL="" CWD="" CONSOLE=0 MODE=run KEEP=
ENVS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) MEM="${2:?--mem needs MiB}"; shift 2 ;;
    --cpus) CPUS="${2:?--cpus needs N}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
    --stall) STALL="${2:?--stall needs seconds}"; shift 2 ;;
    --env) ENVS+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
    --cwd) CWD="${2:?--cwd needs a directory}"; shift 2 ;;
    --console) CONSOLE=1; shift ;;
    --prepare) MODE=prepare; shift ;;
    --check) MODE=check; shift ;;
    --print-cache) echo "$CACHE"; exit 0 ;;
    -h|--help) awk 'NR>1 && !/^#/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (usage: scripts/svm-host.sh [--mem MiB] [--cpus N] -- CMD...)" ;;
  esac
done
case "$MEM$CPUS${TIMEOUT:-0}${STALL:-0}" in *[!0-9]*) die "--mem, --cpus, --timeout and --stall take integers" ;; esac
if [ "$MODE" = run ] && [ $# -eq 0 ]; then die "no command (usage: scripts/svm-host.sh [options] -- CMD...)"; fi
if [ "$MODE" = run ]; then
  [ -n "$CWD" ] || CWD="$(pwd)"
  CWD="$(cd "$CWD" && pwd -P)" || die "--cwd: no such directory"
  # The host sees this machine's / but mounts its own /tmp, /run, /dev, /proc and /sys.
  case "$CWD/" in /dev/*|/proc/*|/sys/*)
    die "$CWD is under /$(echo "$CWD" | cut -d/ -f2): the nested host mounts its own there; run from a checkout elsewhere" ;;
    /tmp/*|/run/*) KEEP="$CWD" ;; # kept visible over the nested host's own /tmp or /run
  esac
fi

if [ "$MODE" = check ]; then
  # die() prints to stderr; --check answers on stdout.
  die() { printf 'unavailable: %s\n' "$*"; exit 125; }
fi
command -v "$QEMU" >/dev/null 2>&1 \
  || die "$QEMU not found: install Debian's qemu-system-x86 (scripts/install-guest-deps.sh)"
case " $("$BUSYBOX" --list 2>/dev/null | tr '\n' ' ') " in *" cpio "*) ;; *) false ;; esac \
  || die "$BUSYBOX (busybox-static) not found: install busybox-static"
[ "$(uname -m)" = x86_64 ] || die "the nested SVM host needs an x86_64 machine"

if [ "$MODE" != check ]; then
  mkdir -p "$CACHE" || die "cannot create the cache $CACHE"
  exec 8>"$CACHE/.lock"
  flock 8
fi

# ---------------------------------------------------------------- kernel package
# Finds the .deb (cache, apt's archive, apt-get download); prints its path.
find_kernel_deb() {
  local pkg deb
  if [ -n "${SVMHOST_KERNEL_DEB:-}" ]; then
    [ -f "$SVMHOST_KERNEL_DEB" ] || { log "SVMHOST_KERNEL_DEB=$SVMHOST_KERNEL_DEB: no such file"; return 1; }
    echo "$SVMHOST_KERNEL_DEB"; return 0
  fi
  pkg="${SVMHOST_KERNEL_PKG:-}"
  if [ -z "$pkg" ]; then
    pkg="$(resolve_kernel_pkg)"
  fi
  if [ -z "$pkg" ]; then log "apt-cache does not know linux-image-amd64 (apt-get update?)"; return 1; fi
  if [ "$MODE" = check ]; then
    ls -d "$CACHE/kernel/${pkg}_"*/order >/dev/null 2>&1 && { echo "ok: kernel $pkg unpacked in $CACHE"; return 0; }
    ls "$CACHE/debs/${pkg}_"*_amd64.deb /var/cache/apt/archives/"${pkg}_"*_amd64.deb >/dev/null 2>&1 \
      && { echo "ok: kernel package $pkg fetched (first run unpacks it)"; return 0; }
    apt-cache show "$pkg" >/dev/null 2>&1 && { echo "ok: kernel package $pkg downloadable (first run fetches ~70 MB)"; return 0; }
    return 1
  fi
  mkdir -p "$CACHE/debs"
  for deb in "$CACHE/debs/${pkg}_"*_amd64.deb /var/cache/apt/archives/"${pkg}_"*_amd64.deb; do
    [ -f "$deb" ] && { echo "$deb"; return 0; }
  done
  log "downloading $pkg (apt-get download; it is unpacked into the cache, not installed)"
  local tmp; tmp="$(mktemp -d "$CACHE/debs/.dl-XXXXXX")"
  if ! (cd "$tmp" && apt-get download -q "$pkg" >&2 2>"$tmp/err"); then
    log "apt-get download $pkg failed: $(tail -n1 "$tmp/err" 2>/dev/null)"; rm -rf "$tmp"; return 1
  fi
  deb="$(ls "$tmp"/*.deb 2>/dev/null | head -n1 || true)"
  [ -n "$deb" ] || { rm -rf "$tmp"; return 1; }
  mv "$deb" "$CACHE/debs/"; rm -rf "$tmp"
  echo "$CACHE/debs/$(basename "$deb")"
}

# The package linux-image-amd64 depends on (linux-image-6.1.0-N-amd64), or nothing.
resolve_kernel_pkg() {
  # apt-cache takes ~0.7 s here: remember its answer until apt's package lists change.
  local pkg lists memo
  lists="$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* 2>/dev/null | sha256sum | cut -c1-16)"
  memo="$CACHE/resolved-$lists"
  pkg="$(cat "$memo" 2>/dev/null || true)"
  if [ -z "$pkg" ]; then
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
      | sed -n 's/^ *Depends: \(linux-image-[0-9][0-9.]*-[0-9]*-amd64\)$/\1/p' | head -n1)" || true
    { rm -f "$CACHE"/resolved-*; [ -z "$pkg" ] || echo "$pkg" >"$memo"; } 2>/dev/null || true
  fi
  echo "$pkg"
}

# The ELF kernel inside a bzImage (xz, gzip or zstd payload), as scripts/extract-vmlinux does.
extract_vmlinux() {
  local img="$1" out="$2" m tool pat off
  for m in '\3757zXZ:xz -dc' '\037\213\010:gzip -dc' '\050\265\057\375:zstd -dcq'; do
    tool="${m#*:}"; pat="$(printf "${m%%:*}")"
    command -v "${tool%% *}" >/dev/null 2>&1 || continue
    for off in $(LC_ALL=C grep -abo "$pat" "$img" 2>/dev/null | cut -d: -f1 | head -n 4); do
      tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null || true
      if [ "$(head -c 4 "$out" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then return 0; fi
    done
  done
  rm -f "$out"; return 1
}

# Unpacks vmlinuz, config and the needed modules (with their dependencies, ordered).
unpack_kernel() {
  local deb="$1" out="$2" tmp root kdir
  log "unpacking $(basename "$deb")"
  tmp="$(mktemp -d "$CACHE/kernel/.x-XXXXXX")"
  dpkg-deb -x "$deb" "$tmp/root" || { rm -rf "$tmp"; die "dpkg-deb -x $deb failed"; }
  root="$tmp/root"
  kdir="$(ls -d "$root"/lib/modules/*/kernel "$root"/usr/lib/modules/*/kernel 2>/dev/null | head -n1 || true)"
  [ -n "$kdir" ] && [ -f "$(ls "$root"/boot/vmlinuz-* 2>/dev/null | head -n1)" ] \
    || { rm -rf "$tmp"; die "$(basename "$deb") holds no vmlinuz or modules"; }
  mkdir -p "$tmp/out/modules"
  cp "$(ls "$root"/boot/vmlinuz-* | head -n1)" "$tmp/out/vmlinuz"
  # The uncompressed ELF vmlinux boots through PVH: no decompressor under TCG (~3.5 s
  # of the ~6 s boot with the bzImage).
  extract_vmlinux "$tmp/out/vmlinuz" "$tmp/out/vmlinux" || log "no vmlinux extracted: booting the bzImage (slower)"
  cp "$(ls "$root"/boot/config-* | head -n1)" "$tmp/out/config"
  basename "$(dirname "$kdir")" >"$tmp/out/release"
  # name -> path (module names use _ and - interchangeably)
  find "$kdir" -name '*.ko' | awk -F/ '{n=$NF; sub(/\.ko$/,"",n); gsub(/-/,"_",n); print n" "$0}' >"$tmp/index"
  local order=() seen=" "
  visit() {
    local n="${1//-/_}" p d
    case "$seen" in *" $n "*) return 0 ;; esac
    seen="$seen$n "
    p="$(awk -v n="$n" '$1==n{print $2; exit}' "$tmp/index")"
    [ -n "$p" ] || { grep -q "/${n}.ko\$" "$(dirname "$kdir")/modules.builtin" 2>/dev/null && return 0
                     rm -rf "$tmp"; die "module $n is neither in $(basename "$deb") nor built in"; }
    for d in $(tr '\0' '\n' <"$p" | sed -n 's/^depends=//p' | tr ',' ' '); do visit "$d"; done
    cp "$p" "$tmp/out/modules/$n.ko"
    order+=("$n")
  }
  local m; for m in $MODULES; do visit "$m"; done
  printf '%s\n' "${order[@]}" >"$tmp/out/order"
  rm -rf "$out"; mv "$tmp/out" "$out"; rm -rf "$tmp"
}

ensure_kernel() {
  mkdir -p "$CACHE/kernel" "$CACHE/initramfs"
  rm -rf "$CACHE"/kernel/.x-* "$CACHE"/initramfs/.b-* "$CACHE"/debs/.dl-*  # left by a killed build (we hold the lock)
  local deb name
  if deb="$(find_kernel_deb)"; then
    name="$(basename "$deb" .deb)"
    KDIR="$CACHE/kernel/$name-$(printf '%s %s' "$RECIPE" "$MODULES" | sha256sum | cut -c1-8)"
    if [ ! -s "$KDIR/order" ]; then
      unpack_kernel "$deb" "$KDIR"
      { ls -dt "$CACHE"/kernel/linux-image-*/ | tail -n +3 | xargs -r rm -rf; } 2>/dev/null || true  # keep two
      { ls -t "$CACHE"/debs/*.deb | tail -n +3 | xargs -r rm -f; } 2>/dev/null || true
    fi
    return 0
  fi
  # Offline: fall back to the newest kernel unpacked before.
  KDIR="$(ls -dt "$CACHE"/kernel/linux-image-*/ 2>/dev/null | head -n1 || true)"
  KDIR="${KDIR%/}"
  [ -n "$KDIR" ] && [ -s "$KDIR/order" ] \
    || die "no kernel for the nested host: Debian's kernel package is unavailable (apt-get update, or set SVMHOST_KERNEL_DEB=/path/to/linux-image-6.1.0-N-amd64.deb)"
  log "using the cached $(basename "$KDIR")"
}

# ---------------------------------------------------------------- initramfs
# PID 1 of the nested host (busybox sh). Mounts this machine's / and switches to it,
# then runs /run/svmhost/cmd.sh, writes its status to /run/svmhost/status and powers off.
init_script() {
  cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "svm-host(init): $*"; echo "SVMHOST-EXIT 125"; sync; poweroff -f; sleep 5; exit 1; }
while read -r m; do
  insmod "/lib/svm-modules/$m.ko" || fail "insmod $m failed"
done </lib/svm-modules/order
R=/newroot
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R \
  || fail "mounting hostroot (9p) failed"
# A checkout under /tmp or /run (svmhost.keep=DIR) stays visible over our own tmpfs there.
KEEP=$(sed -n 's/.*svmhost\.keep=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$KEEP" ]; then mkdir -p /keep && mount --bind "$R$KEEP" /keep || fail "bind $KEEP"; fi
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "tmpfs /run"
if [ -n "$KEEP" ]; then mkdir -p "$R$KEEP" && mount --move /keep "$R$KEEP" || fail "keeping $KEEP"; fi
mkdir -p $R/run/svmhost
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 svmrun $R/run/svmhost || fail "mounting svmrun failed"
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm $R/dev/virtio-ports
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
for p in /sys/class/virtio-ports/*; do
  [ -f "$p/name" ] && ln -sf "../${p##*/}" "$R/dev/virtio-ports/$(cat "$p/name")"
done
[ -e $R/dev/fd ] || ln -s /proc/self/fd $R/dev/fd
ip link set lo up 2>/dev/null
hostname svm-host
mkdir -p $R/run/svmhost/out 2>/dev/null
# Stage 2 runs with this machine's / as the real root (switch_root, not chroot: inside a
# chroot the kernel refuses new user namespaces, which passt needs).
cat >$R/run/svmhost-stage2.sh <<'STAGE2'
# passt wants an IPv4 interface with a default route. A dummy one has nothing behind
# it: packets for other addresses are dropped, so everything stays on this host.
{ ip link add tsibox0 type dummy && ip addr add 10.200.0.2/24 dev tsibox0 \
  && ip link set tsibox0 up && ip route add default via 10.200.0.1 dev tsibox0; } \
  || echo "svm-host(init): no dummy interface (passt will not start)"
# A heartbeat on the console: the caller's --stall watchdog tells a host that froze
# (seen under TCG: no output at all, not even tap's own timeout) from a slow one.
( while sleep 10; do echo "SVMHOST-ALIVE $(cut -d' ' -f1 /proc/uptime)"; done ) &
echo "SVMHOST-START $(cut -d' ' -f1 /proc/uptime)"
/bin/sh /run/svmhost/cmd.sh </dev/null >/dev/virtio-ports/svmhost.stdout 2>/dev/virtio-ports/svmhost.stderr
rc=$?
echo "$rc" >/run/svmhost/status
echo "SVMHOST-EXIT $rc $(cut -d' ' -f1 /proc/uptime)"
sync
/bin/busybox poweroff -f
sleep 5
STAGE2
exec switch_root $R /bin/sh /run/svmhost-stage2.sh
fail "switch_root failed"
INIT
}

ensure_initramfs() {
  local key tmp
  key="$( { echo "$RECIPE"; basename "$KDIR"; sha256sum "$BUSYBOX" | cut -d' ' -f1; init_script; } \
    | sha256sum | cut -c1-16)"
  INITRD="$CACHE/initramfs/$key.cpio.gz"
  [ -s "$INITRD" ] && return 0
  log "building the initramfs $key"
  mkdir -p "$CACHE/initramfs"
  tmp="$(mktemp -d "$CACHE/initramfs/.b-XXXXXX")"
  mkdir -p "$tmp/root"/{bin,dev,proc,sys,newroot,lib/svm-modules}
  cp "$BUSYBOX" "$tmp/root/bin/busybox"
  ln -s busybox "$tmp/root/bin/sh"
  init_script >"$tmp/root/init"; chmod 755 "$tmp/root/init"
  cp "$KDIR"/modules/*.ko "$KDIR/order" "$tmp/root/lib/svm-modules/"
  (cd "$tmp/root" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -n -1 >"$tmp/i.cpio.gz" \
    || { rm -rf "$tmp"; die "writing the initramfs failed"; }
  mv "$tmp/i.cpio.gz" "$INITRD"; rm -rf "$tmp"
  # Keep only the newest few initramfs images.
  { ls -t "$CACHE"/initramfs/*.cpio.gz | tail -n +4 | xargs -r rm -f; } 2>/dev/null || true
}

if [ "$MODE" = check ]; then
  if r="$(find_kernel_deb 2>/dev/null)"; then
    case "$r" in ok:*) echo "$r" ;; *) echo "ok: kernel package $r" ;; esac
    exit 0
  fi
  k="$(ls -d "$CACHE"/kernel/linux-image-*/order 2>/dev/null | head -n1 || true)"
  [ -n "$k" ] && { echo "ok: kernel $(basename "$(dirname "$k")") cached (apt cannot fetch a newer one)"; exit 0; }
  die "no kernel: ${SVMHOST_KERNEL_DEB:-${SVMHOST_KERNEL_PKG:-the package linux-image-amd64 depends on}} is not available and none is cached (apt-get update?)"
fi

ensure_kernel
ensure_initramfs
exec 8>&-  # the cache is built: concurrent runs need no lock
if [ "$MODE" = prepare ]; then
  log "ready: kernel $(cat "$KDIR/release"), initramfs $(basename "$INITRD")"
  exit 0
fi

# ---------------------------------------------------------------- run
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

RUN="$(mktemp -d "${TMPDIR:-/tmp}/svm-host.XXXXXX")"
QPID="" PIDS=()
cleanup() {
  set +e
  [ -n "$QPID" ] && { kill "$QPID" 2>/dev/null; wait "$QPID" 2>/dev/null; }
  local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

{
  echo "export PATH=$(q "$PATH")"
  echo "export HOME=/tmp TMPDIR=/tmp SVMHOST=1 SVMHOST_OUT=/run/svmhost/out"
  cb="$(cd "$CACHE_BASE" 2>/dev/null && pwd -P || echo "$CACHE_BASE")"
  case "$cb/" in /tmp/*|/run/*) log "warning: the cache $cb is under /tmp or /run: CMD will not see it (XDG_CACHE_HOME)" ;; esac
  echo "export XDG_CACHE_HOME=$(q "$cb")"
  [ -n "${TERM:-}" ] && echo "export TERM=$(q "$TERM")"
  while IFS='=' read -r n _; do
    case "$n" in TSIBOX_*) echo "export $n=$(q "${!n}")" ;; esac
  done < <(env | grep -E '^TSIBOX_[A-Za-z0-9_]*=' || true)
  for e in "${ENVS[@]}"; do
    case "$e" in
      *=*) n="${e%%=*}"; v="${e#*=}" ;;
      *) n="$e"; v="${!e-}" ;;
    esac
    case "$n" in ''|[0-9]*|*[!A-Za-z0-9_]*) die "--env: bad name '$n'" ;; esac
    echo "export $n=$(q "$v")"
  done
  echo "cd $(q "$CWD") || exit 125"
  printf 'exec'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; echo
} >"$RUN/cmd.sh"

# Readers hold their fifo open until EOF so that QEMU never meets EPIPE (it would spin
# and the guest's writes would block). When our stdout is closed (`| head`), CMD is
# stopped as a writer into a closed pipe would be: the host is killed and we exit 141.
mkfifo "$RUN/stdout.fifo" "$RUN/stderr.fifo"
BROKEN=0
trap 'BROKEN=1; [ -z "$QPID" ] || kill "$QPID" 2>/dev/null' USR1
( trap '' PIPE; { cat <&5 2>/dev/null || { kill -USR1 $$; cat <&5 >/dev/null; }; } 5<"$RUN/stdout.fifo" ) &
PIDS+=($!); OUTCAT=$!
( trap '' PIPE; { cat <&5 >&2 2>/dev/null || cat <&5 >/dev/null; } 5<"$RUN/stderr.fifo" ) &
PIDS+=($!); ERRCAT=$!
: >"$RUN/console.log"
if [ "$CONSOLE" = 1 ]; then tail -n +1 -f "$RUN/console.log" >&2 & PIDS+=($!); fi

KERNEL="$KDIR/vmlinux"; [ -f "$KERNEL" ] || KERNEL="$KDIR/vmlinuz"
QARGS=(
  -accel tcg -cpu max -M q35 -m "$MEM" -smp "$CPUS"
  -nodefaults -no-user-config -display none -monitor none -no-reboot
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init${KEEP:+ svmhost.keep=$KEEP} ${SVMHOST_KERNEL_ARGS:-}"
  -chardev "file,id=con,path=$RUN/console.log" -serial chardev:con
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
  -fsdev "local,id=svmrun,path=$RUN,security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=svmrun,mount_tag=svmrun"
  -device virtio-serial-pci,id=vser
  -chardev "file,id=out,path=$RUN/stdout.fifo" -device virtserialport,bus=vser.0,chardev=out,name=svmhost.stdout
  -chardev "file,id=err,path=$RUN/stderr.fifo" -device virtserialport,bus=vser.0,chardev=err,name=svmhost.stderr
)
T0=$(date +%s.%N)
if [ -n "$TIMEOUT" ]; then
  timeout -k 5 "$TIMEOUT" "$QEMU" "${QARGS[@]}" </dev/null 2>"$RUN/qemu.err" & QPID=$!
else
  "$QEMU" "${QARGS[@]}" </dev/null 2>"$RUN/qemu.err" & QPID=$!
fi
[ "$BROKEN" = 0 ] || kill "$QPID" 2>/dev/null
if [ -n "$STALL" ]; then
  # Polls the console's age; the QEMU PID is this subshell's $QPID copy.
  ( while kill -0 "$QPID" 2>/dev/null; do
      sleep 5
      age=$(( $(date +%s) - $(stat -c %Y "$RUN/console.log") ))
      if [ "$age" -gt "$STALL" ]; then : >"$RUN/stalled"; kill "$QPID" 2>/dev/null; break; fi
    done ) & PIDS+=($!)
fi
qrc=0; wait "$QPID" || qrc=$?
while kill -0 "$QPID" 2>/dev/null; do qrc=0; wait "$QPID" || qrc=$?; done  # woken by USR1
QPID=""
T1=$(date +%s.%N)
# Release a reader still waiting in open() (QEMU never opened its fifo), then drain.
for f in stdout stderr; do exec 3<>"$RUN/$f.fifo"; exec 3>&-; done
wait "$OUTCAT" "$ERRCAT" 2>/dev/null || true
if [ "$CONSOLE" = 1 ]; then sleep 0.2; fi

if [ -n "${SVMHOST_OUT:-}" ] && [ -d "$RUN/out" ] && [ -n "$(ls -A "$RUN/out")" ]; then
  mkdir -p "$SVMHOST_OUT" && cp -a "$RUN/out/." "$SVMHOST_OUT/" || log "copying out/ to $SVMHOST_OUT failed"
fi
start="$(sed -n 's/^SVMHOST-START \([0-9.]*\).*/\1/p' "$RUN/console.log" | tail -n1)"
end="$(sed -n 's/^SVMHOST-EXIT [0-9]* \([0-9.]*\).*/\1/p' "$RUN/console.log" | tail -n1)"
if [ -n "${SVMHOST_TIMES:-}" ]; then
  log "times: qemu $(echo "$T1 - $T0" | bc)s; guest uptime at command start ${start:-?}s, at its end ${end:-?}s"
fi
if [ "$BROKEN" = 1 ]; then exit 141; fi
if [ -s "$RUN/status" ]; then
  exit "$(cat "$RUN/status")"
fi
if [ -e "$RUN/stalled" ]; then
  log "the nested host stalled: its console was silent for over ${STALL}s; console (last 20 lines):"
  grep -v '^SVMHOST-ALIVE' "$RUN/console.log" | tail -n 20 | sed 's/^/svm-host: | /' >&2
  exit 124
fi
if [ -n "$TIMEOUT" ] && { [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; }; then
  log "timed out after ${TIMEOUT}s; console (last 20 lines):"
  grep -v '^SVMHOST-ALIVE' "$RUN/console.log" | tail -n 20 | sed 's/^/svm-host: | /' >&2
  exit 124
fi
log "the nested host stopped without a status (qemu exit $qrc)"
[ -s "$RUN/qemu.err" ] && sed 's/^/svm-host: qemu: /' "$RUN/qemu.err" >&2
log "console (last 40 lines):"
grep -v '^SVMHOST-ALIVE' "$RUN/console.log" | tail -n 40 | sed 's/^/svm-host: | /' >&2
exit 125
