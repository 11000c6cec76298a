#!/usr/bin/env bash
# Builds the platform wheel, installs it into a clean venv and boots a tiny guest from it with
# no C compiler reachable and an empty cache: the cffi KVM bindings must come from the wheel
# (native._kvm, built by setup.py's cffi_modules), not from native.build's first-use compile.
# Needs /dev/kvm and the package index pip is configured with (for the wheel's dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=$SECONDS
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps . -w "$work/wheel" 2>&1 | grep -v '^WARNING: Location' || true
wheel=$(echo "$work"/wheel/lguest_harness-*.whl)
# The listing is read whole: `grep -q` would stop reading at the first match, and under pipefail
# the lister's broken pipe failed the check once the wheel grew past a pipe's buffer.
listing=$("$PY" -m zipfile -l "$wheel")
grep -q 'native/_kvm.*\.so' <<<"$listing" || { echo "wheel-check: no native/_kvm*.so in $wheel" >&2; exit 1; }
echo "wheel-check: built $(basename "$wheel") ($((SECONDS - start)) s)"

start=$SECONDS
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel" 2>&1 | grep -v '^WARNING: Location' || true
# The tiny guest comes from the source tree's test helpers: print a line, then reset (exit 0).
PYTHONPATH=$PWD "$PY" -c 'import sys; from tests.unit import tiny_guests as g
sys.stdout.buffer.write(g.elf(g.say(b"hello from the wheel\n") + g.RESET + g.SPIN))' > "$work/vmlinux"

# Only the venv on PATH, no CC/LDSHARED, a fresh cache, and a cwd outside the source tree.
clean=(env -i "PATH=$work/venv/bin" "HOME=$work" "XDG_CACHE_HOME=$work/cache")
for compiler in cc gcc x86_64-linux-gnu-gcc clang; do
  if "${clean[@]}" /bin/sh -c "command -v $compiler" >/dev/null; then
    echo "wheel-check: $compiler is reachable on the clean PATH" >&2; exit 1
  fi
done
cd "$work"
"${clean[@]}" python -c 'import native.kvm as k, sys
from native.kvm import ffi, lib
assert k._module is not None, "native._kvm missing or stale: the bindings were compiled at first use"
assert k._module.__file__.startswith(sys.prefix), k._module.__file__
from launcher.barrier import implementation
assert implementation() == "native", "the virtqueue fence fell back to a lock"
print("wheel-check: KVM_CREATE_VM =", hex(lib.KVM_CREATE_VM), "from", k._module.__file__)'
status=0
"${clean[@]}" lguest-harness boot --backend kvm --timeout 20 8 "$work/vmlinux" > "$work/console" || status=$?
cat "$work/console"
if [ "$status" -ne 0 ] || ! grep -q "hello from the wheel" "$work/console"; then
  echo "wheel-check: the tiny guest did not boot cleanly (exit status $status)" >&2; exit 1
fi
if [ -n "$(ls -A "$work/cache" 2>/dev/null)" ]; then
  echo "wheel-check: something was compiled into $work/cache" >&2; exit 1
fi
echo "wheel-check: ok, installed and booted without a compiler ($((SECONDS - start)) s after the wheel build)"
