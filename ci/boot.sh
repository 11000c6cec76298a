#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: boot a guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
lguest-harness --help
