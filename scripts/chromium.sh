#!/usr/bin/env bash
# Debian's headless Chromium, for the browser test of `aaer report --html`
# (tests/test_report_html.py drives it with Playwright; no `playwright install`: that
# downloads a browser build of its own).
#
#   bash scripts/chromium.sh      # apt-get install chromium when /usr/bin/chromium is missing
#
# Safe to run again: does nothing when chromium is there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "chromium.sh: chromium is not installed and this is not root with apt-get; install" \
       "it (Debian: apt-get install -y chromium)" >&2
  exit 1
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
     >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "chromium.sh: apt-get install chromium failed (above)" >&2
  exit 1
fi
# Debian's launcher may warn about /dev/shm on stderr; what matters is that it starts
/usr/bin/chromium --headless --no-sandbox --version >/dev/null 2>&1 || {
  echo "chromium.sh: /usr/bin/chromium was installed but does not start" >&2; exit 1; }
