# Debian package helpers shared by the build scripts (source this file).
# Callers define log() and die() first.

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Installs the packages that are missing (apt-get update only when an install fails).
deb_ensure() {
  local missing=() p
  for p in "$@"; do deb_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
    || die "apt-get install ${missing[*]} failed"
}

# Installs PACKAGES (when missing) from Debian suite SUITE (e.g. trixie) without letting
# anything else come from it: a deb822 source for SUITE plus an apt preferences file that
# pins all of SUITE to -1 (never installed, never an upgrade) except PACKAGES (500).
# Idempotent: the files are rewritten only when their content differs, and `apt-get
# update` runs only when they changed or SUITE's index has no candidate yet.
deb_ensure_from_pinned_suite() {
  local suite="$1"; shift
  local missing=() p
  for p in "$@"; do deb_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (from $suite; run this script as root)"
  local src="/etc/apt/sources.list.d/tsibox-$suite.sources" pref="/etc/apt/preferences.d/tsibox-$suite" changed=0
  local want_src want_pref
  want_src="$(printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$suite")"
  want_pref="$(printf 'Package: *\nPin: release n=%s\nPin-Priority: -1\n\nPackage: %s\nPin: release n=%s\nPin-Priority: 500\n' "$suite" "$*" "$suite")"
  if [ "$(cat "$src" 2>/dev/null)" != "$want_src" ]; then printf '%s\n' "$want_src" > "$src"; changed=1; fi
  if [ "$(cat "$pref" 2>/dev/null)" != "$want_pref" ]; then printf '%s\n' "$want_pref" > "$pref"; changed=1; fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "$changed" -eq 1 ] || ! apt-cache policy "${missing[0]}" 2>/dev/null | grep -q "$suite"; then
    log "apt-get update (source $suite, pinned: only ${*} may come from it)"
    apt-get update -q >&2 || die "apt-get update failed (with $src)"
  fi
  log "installing ${missing[*]} from $suite (apt-get)"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} (from $suite) failed"
}
