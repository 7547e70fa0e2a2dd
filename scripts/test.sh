#!/usr/bin/env bash
# The test command: installs what the tests need into .venv, then runs the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# the slow CO-fixture test trains on the real Fashion-MNIST (Debian's package)
bash "$ROOT/scripts/get_fashion_mnist.sh"
# tests/test_slurm.py starts a real one-node Slurm (Debian's slurm-wlm + munge)
bash "$ROOT/scripts/slurm.sh" install || echo "Slurm is not installed: tests/test_slurm.py will fail" >&2
# tests/test_report_html.py opens report.html in Debian's headless Chromium
bash "$ROOT/scripts/chromium.sh" || echo "chromium is not installed: tests/test_report_html.py will fail" >&2
cd "$ROOT"
exec "${AAER_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
