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
# Not gating yet: on kvm_amd the command channel's bulk output stalls (issue 13); the stage's
# result and L1's console tail are printed, and its console kept in ci-artifacts/.
if ! bash ci/nested-kvm.sh; then
  echo "ci: the ordinary-KVM stage FAILED (not gating yet, see README 'Which KVM hosts are tested')" >&2
fi
