#!/usr/bin/env bash
# qemu-user and an arm64 glibc, to start the arm64 Lambda packages (`bootstrap` files built by
# cargo-lambda) on an x86_64 machine: `make check-arm64`.
#
#   infra/qemu-arm64.sh    install Debian's `qemu-user` and `libc6-arm64-cross` when missing,
#                          then print the runner prefix: qemu-aarch64 -L <arm64 sysroot>
#
# Idempotent. Needs apt-get (Debian/Ubuntu) and root, or sudo, the first time. On an arm64
# machine the packages run as they are and the prefix is empty.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
sysroot=/usr/aarch64-linux-gnu

if [ "$(uname -m)" = aarch64 ]; then
  echo ""
  exit 0
fi
if ! have qemu-aarch64 || [ ! -e "$sysroot/lib/ld-linux-aarch64.so.1" ]; then
  "$(dirname "$0")/apt-install.sh" qemu-arm64.sh qemu-user libc6-arm64-cross
fi
have qemu-aarch64 || { echo "qemu-arm64.sh: qemu-aarch64 is still not on PATH after the install" >&2; exit 2; }
echo "qemu-arm64.sh: $(qemu-aarch64 --version | head -1)" >&2
echo "qemu-aarch64 -L $sysroot"
