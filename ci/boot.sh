#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: build (or reuse) the guest kernel and
# initramfs, boot them under KVM, show the ready marker and a prompt, power off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec lguest-harness demo "$@"
