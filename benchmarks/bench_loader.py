"""The streaming loader's throughput, and how many workers an H100 would need.

    python benchmarks/bench_loader.py                    # 96 JPEGs of 500x375, 1 and 2 workers
    python benchmarks/bench_loader.py --images 256 --workers 1 2 4 --step

Writes ``--images`` full-size JPEGs (500x375, ImageNet's median size, quality 90, a smooth
picture plus texture so that they decode like photographs rather than like flat colour)
into a temporary ImageNet-100 tree, then times whole epochs of aaer's StreamingLoader
(decode + RandomResizedCrop(224) + flip, batch 32) with each worker count: decoded and
augmented images/s, and per worker. With ``--step`` it also times one RS-AAER step of the
ResNet-18 variant (resnet18-imagenet, 224x224) on this CPU.

The H100 estimate: the FLOPs of one RS-AAER step per image (counted with
torch.utils.flop_counter on the real model: 2 forwards, a backward to the input and a full
backward; see step_flops_and_seconds) against an H100's sustained bf16 throughput, taken as 40% of its 989 dense
TFLOP/s (convolutions at batch 128 reach 35-50%), gives the images/s the model would
consume; divided by one worker's images/s, the workers that would keep it fed. The last
line is the headline.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

H100_BF16_DENSE = 989e12
UTILISATION = 0.40


def write_tree(root: str, n: int, seed: int = 0) -> str:
    from PIL import Image
    rng = np.random.default_rng(seed)
    top = os.path.join(root, "Imagenet-100")
    wnids = [f"n{10000000 + k:08d}" for k in range(4)]
    os.makedirs(top)
    with open(os.path.join(top, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        for split in ("train",) + (("val",) if i < 4 else ()):
            d = os.path.join(top, split, wnids[i % 4])
            os.makedirs(d, exist_ok=True)
            base = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(base).resize((500, 375), Image.BICUBIC), np.float32)
            texture = 18 * np.sin(xx / rng.uniform(2, 9) + yy / rng.uniform(2, 9))[..., None]
            img = np.clip(img + texture + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i}.JPEG"), quality=90)
    return root


def time_loader(root: str, workers: int, epochs: int, batch: int) -> float:
    from aaer.data import load_dataset
    from aaer.data.streaming import StreamingLoader
    ds = load_dataset("imagenet100", root, image_size=224, workers=1)
    loader = StreamingLoader(ds.train_x, ds.train_y, batch, shuffle=True, seed=0,
                             workers=workers)
    try:
        for x, _ in loader:                  # warm-up: start the workers
            break
        n, t0 = 0, time.perf_counter()
        for e in range(1, epochs + 1):
            loader.set_epoch(e)
            for x, _ in loader:
                n += x.shape[0]
        return n / (time.perf_counter() - t0)
    finally:
        loader.close()


def step_flops_and_seconds(batch: int, time_it: bool):
    """FLOPs of one RS-AAER step per image, and (time_it) its seconds on this CPU.

    FlopCounterMode counts a forward F and a full backward B (weights and activations);
    the step is 2 forwards, one backward to the input only (the activations' half of a
    backward, B/2: the weight gradients are the other half) and one full backward:
    2F + 1.5B."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aaer.methods import StepContext, create_method
    from aaer.models import build
    model = build("resnet18-imagenet", 100, 3, 224, (0.485, 0.456, 0.406),
                  (0.229, 0.224, 0.225))
    x, y = torch.rand(batch, 3, 224, 224), torch.randint(0, 100, (batch,))
    with FlopCounterMode(display=False) as fwd:
        loss = torch.nn.functional.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    flops = (2 * fwd.get_total_flops() + 1.5 * bwd.get_total_flops()) / batch
    seconds = None
    if time_it:
        method = create_method("rs-aaer", 8 / 255)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        t0 = time.perf_counter()
        for _ in range(2):
            opt.zero_grad()
            method.step(model, x, y, StepContext()).loss.backward()
            opt.step()
        seconds = (time.perf_counter() - t0) / 2
    return flops, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--step", action="store_true", help="also time one RS-AAER step on the CPU")
    p.add_argument("--step-batch", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(tmp, a.images)
        rates = {}
        for w in a.workers:
            rates[w] = time_loader(root, w, a.epochs, a.batch)
            print(f"workers {w}: {rates[w]:.1f} images/s decoded + augmented "
                  f"({rates[w] / w:.1f} per worker)", flush=True)
    per_worker = max(r / w for w, r in rates.items())
    flops, seconds = step_flops_and_seconds(a.step_batch, a.step)
    if seconds is not None:
        print(f"resnet18-imagenet RS-AAER step on this CPU: {seconds:.2f} s at batch "
              f"{a.step_batch} ({seconds / a.step_batch:.2f} s per image)")
    need = UTILISATION * H100_BF16_DENSE / flops
    print(f"RS-AAER step: {flops / 1e9:.1f} GFLOP per image; an H100 at "
          f"{UTILISATION:.0%} of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s would train "
          f"{need:.0f} images/s")
    print(f"workers_to_feed_h100: {need / per_worker:.0f} (at {per_worker:.1f} images/s per "
          f"worker on this CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
