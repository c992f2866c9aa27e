#!/usr/bin/env bash
# Chromium and chromedriver for the run console's browser test (tests/ui_browser.rs).
#
#   infra/chromium.sh    install Debian's `chromium` and `chromium-driver` when either is missing
#
# Idempotent: when both `chromium` and `chromedriver` are on PATH it only prints their versions.
# Needs apt-get (Debian/Ubuntu) and root, or sudo. Browsers are not downloaded from anywhere
# else: the distribution's packages are the ones the test is run with.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
  echo "chromium.sh: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1)" >&2
  exit 0
fi

"$(dirname "$0")/apt-install.sh" chromium.sh chromium chromium-driver
have chromedriver || { echo "chromium.sh: chromedriver is still not on PATH after the install" >&2; exit 2; }
echo "chromium.sh: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1)" >&2
