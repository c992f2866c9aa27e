#!/usr/bin/env bash
# The AWS emulator (moto's server mode) for the switchyard-aws tests.
#
#   infra/moto.sh start   install moto into the venv if missing, start moto_server in the
#                         background unless it already answers, print its endpoint URL
#   infra/moto.sh stop    stop the server this script started (its pid file); no-op if none
#   infra/moto.sh url     print the endpoint URL (does not check that it answers)
#
# Venv:  ${SWITCHYARD_VENV_AWS:-/var/tmp/switchyard-aws-venv} (outside the repo, kept across runs)
# Port:  ${MOTO_PORT:-5055} on 127.0.0.1.  Python: ${PYTHON:-python3}.
# State: pid file and log in the venv ($venv/moto-$port.pid, $venv/moto-$port.log).
# Idempotent: `start` on a running server only prints the URL; `stop` on a stopped one is quiet.
# stdout carries only the URL (start, url); pip and progress go to stderr.
set -euo pipefail

MOTO_PIN="moto[server]==5.2.5"
venv="${SWITCHYARD_VENV_AWS:-/var/tmp/switchyard-aws-venv}"
port="${MOTO_PORT:-5055}"
py="${PYTHON:-python3}"
url="http://127.0.0.1:$port"
pidfile="$venv/moto-$port.pid"
logfile="$venv/moto-$port.log"
stamp="$venv/.switchyard-moto"
export PIP_ROOT_USER_ACTION=ignore

die() { echo "moto.sh: $*" >&2; exit 2; }

answers() { "$py" - "$url" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)
PY
}

install() {
  if [ -x "$venv/bin/moto_server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$MOTO_PIN" ]; then
    return
  fi
  command -v "$py" >/dev/null 2>&1 || die "'$py' not found; install python3"
  echo "moto.sh: installing $MOTO_PIN into $venv" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv" >&2 || die "python3 -m venv failed (install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$MOTO_PIN" >&2
  echo "$MOTO_PIN" > "$stamp"
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  install
  if answers; then echo "$url"; return; fi
  if pid=$(running_pid); then :; else
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
    echo $! > "$pidfile"
  fi
  for _ in $(seq 1 100); do
    if answers; then echo "$url"; return; fi
    running_pid >/dev/null || { tail -20 "$logfile" >&2; die "moto_server exited; log: $logfile"; }
    sleep 0.2
  done
  die "moto_server did not answer on $url within 20 s; log: $logfile"
}

stop() {
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) echo "usage: infra/moto.sh start|stop|url" >&2; exit 2 ;;
esac
