#!/usr/bin/env bash
# Installs everything lguest-harness needs on a fresh Debian 12 machine (idempotent, root).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils lz4 zstd
  linux-source-6.1 busybox-static iproute2 e2fsprogs python3-dev libffi-dev qemu-system-x86
  qemu-system-common   # /usr/lib/qemu/virtiofsd: the vhost-user backend of --share and `run`
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
