#!/usr/bin/env bash
# The README's first command: set up .venv (torch + aaer), get Fashion-MNIST, run `aaer demo`.
# Arguments go to `aaer demo` (e.g. --seed 1, --out-dir runs/demo2, --download).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/get_fashion_mnist.sh"
cd "$ROOT"
exec "${AAER_VENV:-$ROOT/.venv}/bin/aaer" demo "$@"
