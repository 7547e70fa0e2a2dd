#!/usr/bin/env bash
# Issue 30's GPU lease as one call: the five 30-epoch CIFAR-10 runs packed on the GPU, their
# evaluations, and the step's speed (fp32/bf16 x eager/CUDA graphs, packing K = 1, 2, 4, 8),
# under a 530 s budget; benchmarks/gpu_lease.py says what runs, in which order, and its time
# estimates. Small results go to $OUT (lease.json, lease.md, perf_*.json, runs/*, report/).
#   python benchmarks/gpu_data.py pack     # once, here: data/cifar10-jpeg.npz (19.5 MiB)
#   bash benchmarks/gpu_lease.sh          # on the device (carry data/cifar10-jpeg.npz)
#   bash benchmarks/gpu_lease.sh --tiny   # the CPU rehearsal, end to end, in minutes
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/runs/gpu-lease-out}"; mkdir -p "$OUT"; export OUT
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        | tee "$OUT/nvidia-smi.txt"
fi
exec "$PY" benchmarks/gpu_lease.py "$@"
