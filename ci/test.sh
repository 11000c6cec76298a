#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI stops a run at 90 minutes: the nested stage gets what is left of 88, whatever the first took.
BUDGET=${LGUEST_HARNESS_CI_BUDGET:-5280}
bash ci/setup.sh
PY=${PYTHON:-python3}
lint-imports
# The packaged wheel carries the compiled KVM bindings: install it in a clean venv, boot with no compiler.
bash ci/wheel-check.sh
# The integration tests boot the recipe kernel: build it here so its progress shows.
lguest-harness kernel build
# Stock-kernel tests need ordinary KVM: the next stage runs them (this host's kvm_pvm cannot).
"$PY" -m pytest tests -m "not ordinary_kvm" "$@"
# The real-guest tests once more, on ordinary KVM (kvm_amd in an L1 VM), as users run them; a
# failure there fails CI. L1's console is kept in ci-artifacts/.
NESTED_TIMEOUT=$((BUDGET - SECONDS)) bash ci/nested-kvm.sh
