#!/usr/bin/env bash
# AWS SAM CLI in a venv of its own, then `sam "$@"`.
#
#   infra/sam.sh validate --lint        check template.yaml (SAM transform + cfn-lint)
#   infra/sam.sh build                  build the four Lambda binaries: cargo-lambda (PyPI, with
#                                       zig) is installed into the same venv first, and the
#                                       aarch64-unknown-linux-gnu target through rustup if missing
#   infra/sam.sh deploy --guided        deploy (needs AWS credentials; see docs/deploy.md)
#   infra/sam.sh --version
#   infra/sam.sh lambda ARGS...         `cargo lambda ARGS...` (installed first): watch/invoke on
#                                       this machine (tests/lambda_local.py, docs/deploy.md), or
#                                       `build --release --arm64` (make bench-aws; the aarch64
#                                       target is added through rustup when --arm64 is given)
#
# Venv:   ${SWITCHYARD_VENV_SAM:-/var/tmp/switchyard-sam-venv} (outside the repo, kept across
#         runs). Not moto's venv: aws-sam-cli pins boto3/botocore and would move moto's.
# Python: ${PYTHON:-python3} (SAM CLI 1.170 wants Python >= 3.10).
# Stamps: $venv/.switchyard-sam and $venv/.switchyard-cargo-lambda hold the pins; a venv with
#         another pin is upgraded in place.
# Runs from the repository root (so template.yaml and samconfig.toml are found) unless
# SAM_NO_CD=1. pip output goes to stderr; stdout is SAM's alone.
set -euo pipefail

SAM_PIN="aws-sam-cli==1.170.0"
CARGO_LAMBDA_PIN="cargo-lambda==1.9.2"
venv="${SWITCHYARD_VENV_SAM:-/var/tmp/switchyard-sam-venv}"
py="${PYTHON:-python3}"
stamp="$venv/.switchyard-sam"
export PIP_ROOT_USER_ACTION=ignore
# No usage metrics from SAM CLI (it would try to reach the internet on every command).
export SAM_CLI_TELEMETRY=0

die() { echo "sam.sh: $*" >&2; exit 2; }

install() {
  if [ -x "$venv/bin/sam" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$SAM_PIN" ]; then
    return
  fi
  command -v "$py" >/dev/null 2>&1 || die "'$py' not found; install python3"
  echo "sam.sh: installing $SAM_PIN into $venv" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv" >&2 || die "python3 -m venv failed (install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$SAM_PIN" >&2
  echo "$SAM_PIN" > "$stamp"
}

# `sam build` finds cargo-lambda on PATH (the rust-cargolambda build method runs
# `cargo lambda build --release --arm64 --bin <Binary>` in CodeUri).
install_cargo_lambda() {
  local cstamp="$venv/.switchyard-cargo-lambda"
  if [ ! -x "$venv/bin/cargo-lambda" ] || [ "$(cat "$cstamp" 2>/dev/null)" != "$CARGO_LAMBDA_PIN" ]; then
    echo "sam.sh: installing $CARGO_LAMBDA_PIN into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$CARGO_LAMBDA_PIN" >&2
    echo "$CARGO_LAMBDA_PIN" > "$cstamp"
  fi
  [ "${1:-}" = host ] && return
  if command -v rustup >/dev/null 2>&1 \
     && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    echo "sam.sh: rustup target add aarch64-unknown-linux-gnu" >&2
    rustup target add aarch64-unknown-linux-gnu >&2
  fi
}

install
case "${1:-}" in
  build|sync) install_cargo_lambda ;;
  lambda)
    # `cargo lambda watch` builds for this machine: no aarch64 target, no SAM involved.
    case " $* " in
      *" --arm64 "*) install_cargo_lambda ;;
      *) install_cargo_lambda host ;;
    esac
    export PATH="$venv/bin:$PATH"
    exec "$venv/bin/cargo-lambda" "$@" ;;
esac
export PATH="$venv/bin:$PATH"
if [ "${SAM_NO_CD:-}" != 1 ]; then
  cd "$(dirname "$0")/.."
fi
exec "$venv/bin/sam" "$@"
