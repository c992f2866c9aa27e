#!/usr/bin/env bash
# Create (once) the Python virtualenv for the API test tooling and print its path.
#
#   tests/api/venv.sh            -> last line of stdout is the venv directory
#
# Where:   ${SWITCHYARD_VENV:-/var/tmp/switchyard-venv}  (outside the repo, kept across runs)
# Python:  ${PYTHON:-python3}, which must be >= 3.11 (schemathesis 4.x needs it).
# Idempotent: the venv holds a stamp (sha256 of requirements.txt + the interpreter's version);
# pip runs only when the stamp differs, so a warm call takes well under a second.
# Concurrency-safe: parallel callers (e.g. cargo test threads) serialize on "$VENV.lock" (flock).
#
# Needs only python3 + pip and PyPI. If `python3 -m venv` cannot bootstrap pip (Debian's python3
# without the python3-venv package has no ensurepip), it falls back to `virtualenv`, installed
# with `python3 -m pip install --target` into a throwaway directory (--target leaves the user's and
# the system's site-packages alone and is not refused by PEP 668 "externally managed" pythons).
# If python3 has no pip either, it exits 2 with a message saying what to install.
# Everything pip says goes to stderr; stdout carries only the venv path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req="$here/requirements.txt"
venv="${SWITCHYARD_VENV:-/var/tmp/switchyard-venv}"
py="${PYTHON:-python3}"
stamp="$venv/.switchyard-requirements"
export PIP_ROOT_USER_ACTION=ignore     # quiet the "running pip as root" warning (CI runs as root)
VIRTUALENV_PIN="virtualenv==21.15.13"   # used only by the no-ensurepip fallback

die() { echo "venv.sh: $*" >&2; exit 2; }

command -v "$py" >/dev/null 2>&1 || die "'$py' not found; install python3 (>= 3.11)"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$("$py" -V 2>&1) is too old: schemathesis needs Python >= 3.11 (set PYTHON=...)"
[ -f "$req" ] || die "missing $req"

want="$( { sha256sum "$req" | cut -d' ' -f1; "$py" -c 'import sys; print(sys.version)'; } )"

is_current() {
  [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -x "$venv/bin/schemathesis" ] && "$venv/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1
}

# Fast path without taking the lock.
if is_current; then echo "$venv"; exit 0; fi

mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$venv.lock"
  flock 9
fi
# Another caller may have finished the job while we waited.
if is_current; then echo "$venv"; exit 0; fi

make_venv() {
  rm -rf "$venv"
  if "$py" -c 'import ensurepip' >/dev/null 2>&1 && "$py" -m venv "$venv" >&2; then
    return 0
  fi
  rm -rf "$venv"
  echo "venv.sh: '$py -m venv' unusable (no ensurepip?); falling back to $VIRTUALENV_PIN" >&2
  "$py" -m pip --version >/dev/null 2>&1 \
    || die "'$py' has neither ensurepip nor pip; install one of them (Debian: apt-get install python3-venv, or python3-pip)"
  local boot
  boot=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-virtualenv.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$boot'" EXIT
  "$py" -m pip install -q --disable-pip-version-check --target "$boot" "$VIRTUALENV_PIN" >&2 \
    || die "could not install $VIRTUALENV_PIN from PyPI"
  PYTHONPATH="$boot" "$py" -m virtualenv -q "$venv" >&2 || die "virtualenv failed to create $venv"
}

# Recreate from scratch when the interpreter changed or the venv is broken; otherwise just re-run
# pip (requirements.txt changed, or a previous install was interrupted).
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1 \
   || { [ -f "$stamp" ] && [ "$(tail -n +2 "$stamp")" != "$(tail -n +2 <<<"$want")" ]; }; then
  make_venv
fi

rm -f "$stamp"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2 \
  || die "pip install -r $req into $venv failed"
printf '%s\n' "$want" > "$stamp"
echo "$venv"
