#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and aaer installed editable.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AAER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
  # Set AAER_TORCH to e.g. "torch" on a GPU machine to take the default build instead.
  "$VENV/bin/python" -m pip install -q "${AAER_TORCH:-torch==2.13.0}"
fi
if ! "$VENV/bin/python" -c "import aaer, pytest, pytest_timeout, xdist, scipy, PIL, matplotlib, tqdm, safetensors, tensorboard, wandb, submitit, yaml, playwright" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
fi
