#!/usr/bin/env bash
# Installs Debian packages with apt-get, as root or through sudo: the one way the scripts that
# need a system package (infra/chromium.sh, infra/qemu-arm64.sh) get it.
#
#   infra/apt-install.sh <who> <package>...    <who> names the caller in messages
set -euo pipefail

who="$1"
shift
have() { command -v "$1" >/dev/null 2>&1; }
have apt-get || { echo "$who: apt-get not found: install $* yourself" >&2; exit 2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  have sudo || { echo "$who: run as root or install sudo" >&2; exit 2; }
  sudo="sudo"
fi
echo "$who: installing $* (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq "$@" >&2
