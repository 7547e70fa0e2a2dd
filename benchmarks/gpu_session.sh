#!/usr/bin/env bash
# Everything that needs a GPU, as one script (a lent GPU session is short): device facts,
# the GPU-resident loader's parity with the CPU, training throughput (bench_gpu.py), the
# per-method step cost on the GPU, exact resume on CUDA, and a torchrun/NCCL bf16 run.
# Usage: bash benchmarks/gpu_session.sh [OUT_DIR]   (results also printed)
set -u
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/aaer-gpu}}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
PY=python3
step() { echo; echo "=== $* ($(date +%T))"; }

step device
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

step "GPU-resident loader == CPU loader"
timeout 120 $PY - <<'PY'
import torch
from aaer.data import BatchLoader
x = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8)
y = torch.randint(0, 10, (50000,))
a = BatchLoader(x, y, 128, shuffle=True, pad=4, flip=True, seed=1)
g = BatchLoader(x, y, 128, shuffle=True, pad=4, flip=True, seed=1, device="cuda")
same = all(torch.equal(p, q.cpu()) and torch.equal(r, s.cpu()) for (p, r), (q, s) in zip(a, g))
print("on_device", g.on_device, "identical batches", same)
PY

step "bench_gpu.py"
timeout 330 $PY benchmarks/bench_gpu.py --steps 60 --warmup 10 2>&1 | tee "$OUT/bench_gpu.txt"

step "bench_methods.py on CUDA"
timeout 150 $PY benchmarks/bench_methods.py --device cuda --models preactresnet18:128 \
    --repeats 5 2>&1 | tee "$OUT/bench_methods_cuda.txt"

step "torchrun, 1 process, NCCL, bf16, synthetic Fashion-MNIST files"
timeout 120 $PY - <<'PY'
import gzip, os, struct
import numpy as np
rng = np.random.default_rng(0)
os.makedirs("/tmp/fm", exist_ok=True)
for prefix, n in (("train", 4096), ("t10k", 512)):
    for kind, arr in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                      ("labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))):
        with gzip.open(f"/tmp/fm/{prefix}-{kind}.gz", "wb") as f:
            f.write(bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
                    + arr.tobytes())
PY
timeout 180 torchrun --standalone --nproc_per_node 1 -m aaer train --dataset fashion-mnist \
    --data-dir /tmp/fm --model small-cnn --method rs-aaer --epsilon 76.5 --epochs 2 \
    --lr-max 0.05 --precision bf16 --eval-protocol quick --out-dir /tmp/fm-run --no-progress \
    2>&1 | tail -8

step "exact resume on CUDA (slow resume tests)"
AAER_TEST_DEVICE=cuda timeout 200 $PY -m pytest tests/test_resume.py -m slow -q -x \
    -p no:cacheprovider 2>&1 | tail -5
echo "gpu_session: done"
