#!/usr/bin/env bash
# make bench-aws, part 2: the size of each Lambda package's `bootstrap` (intake, worker,
# webhook, notifier), built for arm64 in release by cargo-lambda (infra/sam.sh installs it,
# with zig, and the aarch64 rustup target), and the x86_64 release builds beside them.
# The release profile (root Cargo.toml) strips symbols and uses fat LTO; crates/lambdas/build.rs
# drops the unwind tables of these arm64 links. Goal: <= 10 MB each.
#
#   tests/bench/lambda_sizes.sh            build, then print
#   SIZES_NO_BUILD=1 tests/bench/lambda_sizes.sh   print what is built
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
bins=(intake worker webhook notifier)
if [ "${SIZES_NO_BUILD:-}" != 1 ]; then
  infra/sam.sh lambda build --release --arm64 -p switchyard-lambdas --bins >&2
fi
mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.2f} MB ({int(sys.argv[1]) / 2**20:.2f} MiB)')" "$1"; }
echo "| function | arm64 bootstrap (cargo-lambda, release) | x86_64 release |"
echo "|---|---|---|"
for b in "${bins[@]}"; do
  arm="$target/lambda/$b/bootstrap"
  x86="$target/release/$b"
  a="—"; x="—"
  [ -f "$arm" ] && a="$(mb "$(stat -c %s "$arm")")"
  [ -f "$x86" ] && x="$(mb "$(stat -c %s "$x86")")"
  echo "| $b | $a | $x |"
done
for b in "${bins[@]}"; do
  arm="$target/lambda/$b/bootstrap"
  [ -f "$arm" ] && echo "$b: $(file -b "$arm" | cut -d, -f1-2,5-)"
done
echo "(goal: <= 10 MB per function; MB = 10^6 bytes)"
