#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
PY=${PYTHON:-python3}
lint-imports
# The packaged wheel carries the compiled KVM bindings: install it in a clean venv, boot with no compiler.
bash ci/wheel-check.sh
# The integration tests boot the recipe kernel: build it here so its progress shows.
lguest-harness kernel build
"$PY" -m pytest tests "$@"
# The real-guest tests once more, on ordinary KVM (kvm_amd in an L1 VM), as users run them.
bash ci/nested-kvm.sh
