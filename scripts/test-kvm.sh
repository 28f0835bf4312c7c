#!/usr/bin/env bash
# npm run test:kvm — the end-to-end suite under the KVM engine, inside the nested SVM
# test host (scripts/svm-host.sh; docs/kvm-linux-boot.md). Builds what the guest needs
# here first (inside, this checkout and the cache are read-only), boots the host once,
# and runs `tap` there with TSIBOX_E2E_ENGINE=kvm over test/e2e/*.test.js (or the files
# given as arguments, relative to the checkout).
#   TSIBOX_KVM_TIMEOUT  seconds for the whole run inside (default 1800)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

if ! out=$(bash scripts/svm-host.sh --check 2>&1); then
  echo "test:kvm: the nested SVM test host cannot run here: $out" >&2
  exit 1
fi

echo "test:kvm: building (TypeScript, native, guest kernel, initramfs, guest tools)"
npm run -s build
bash scripts/build-kernel.sh >/dev/null
bash scripts/build-initramfs.sh >/dev/null
node -e "import('./dist/src/index.js').then((m) => m.guestToolsArchive())"
bash scripts/svm-host.sh --prepare

if [ $# -gt 0 ]; then FILES=("$@"); else FILES=(dist/test/e2e/*.test.js); fi

# tap writes .tap/ in the project root; inside, the checkout is read-only, so the run
# happens in a writable shadow of it (symlinks to everything, its own package.json).
INNER='set -e
w=/tmp/tsibox-kvm; mkdir -p "$w"
for f in "$ROOT"/* "$ROOT"/.taprc; do [ -e "$f" ] && ln -sfn "$f" "$w/$(basename "$f")"; done
rm -f "$w/package.json"; cp "$ROOT/package.json" "$w/package.json"
cd "$w"
exec node node_modules/.bin/tap --disable-coverage --timeout 600 "$@"'

echo "test:kvm: booting the nested host; ${#FILES[@]} test files under engine kvm"
exec bash scripts/svm-host.sh --timeout "${TSIBOX_KVM_TIMEOUT:-1800}" --mem 3072 --cpus 2 \
  --env TSIBOX_E2E_ENGINE=kvm --env ROOT="$ROOT" -- sh -c "$INNER" sh "${FILES[@]}"
