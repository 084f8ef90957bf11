#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report browser test
# (tests/reports/test_reports_browser.py drives /usr/bin/chromium through Playwright;
# Playwright's own browser download is not used). Idempotent: does nothing when
# /usr/bin/chromium exists. Quiet unless something fails.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
              chromium fonts-dejavu-core; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure_chromium.sh: installing chromium with apt-get failed" >&2
    exit 1
fi
[ -x /usr/bin/chromium ] || { echo "ensure_chromium.sh: /usr/bin/chromium still missing" >&2; exit 1; }
