#!/usr/bin/env bash
# The real-guest suite again on ordinary KVM (kvm_amd), which this host's kvm_pvm is not: an L1 VM
# under QEMU TCG with an SVM-capable CPU and Debian's stock kernel runs tests/integration with the
# host's files (harness/nested.py).  L1's console is kept in ci-artifacts/; an L1 whose kernel
# locks up or whose console falls silent for 10 minutes is run once more, within --timeout.  The
# qemu backend's own tests are left to the main stage (QEMU TCG inside TCG only repeats them,
# slowly); the differential tests stay, comparing our devices on ordinary KVM with QEMU's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p ci-artifacts
exec "$PY" -m harness.nested --timeout "${NESTED_TIMEOUT:-2700}" --log ci-artifacts/nested-l1-console.log -- \
  "$PY" -m pytest tests/integration -k "not qemu" -q -p no:cacheprovider --color=no "$@"
