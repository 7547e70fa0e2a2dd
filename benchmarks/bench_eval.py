"""PGD-50-10 evaluation two ways: the reference transcription (SPEC §5) and aaer's ``pgd``.

The reference loop runs every restart on the whole batch; each step is a forward and a
``loss.backward()`` (mean cross-entropy, weight gradients included) on the whole batch,
moving only the points still classified correctly; per point the largest-loss restart is
kept. aaer's ``pgd`` runs later restarts only on points no restart has broken, steps only
the still-correct points within a restart (input gradient of the summed loss) and counts a
point as broken if any restart broke it. Both draw the same uniform start per restart.

Accuracies: aaer's can only be lower or equal. The reference's max-loss rule can keep a
higher-loss restart that no longer misclassifies a point that another restart broke; aaer
counts such a point as broken. Otherwise the perturbations are the same (the gradient's
sign does not depend on mean vs sum), so the gap is that handful of points.

The model: small-cnn trained on 10000 Fashion-MNIST images with RS-FGSM at eps 0.1 (a few
epochs, cached under /tmp by a hash of the settings) and attacked at the same eps: about
half of the first 100 test points are robust (--eval-eps 0.12: about 45%). Robust points
take every step of every restart in both loops, so the speedup is bounded by the share
of broken points.
One thread by default (the least disturbed by other load on a shared machine).
Last line: ``pgd_speedup: <reference time / aaer time>``.

    python benchmarks/bench_eval.py                 # 100 test points, CPU (~3 min)
    python benchmarks/bench_eval.py --n 1000 --threads 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aaer.attacks.pgd import pgd  # noqa: E402


def reference_pgd(model, x, y, eps, alpha, steps, restarts, gen):
    """SPEC §5 as the lineage writes it."""
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(x)
    for _ in range(restarts):
        delta = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1) * eps
        delta = (torch.clamp(x + delta, 0, 1) - x).requires_grad_(True)
        for _ in range(steps):
            output = model(x + delta)
            index = torch.where(output.max(1)[1] == y)[0]
            if len(index) == 0:
                break
            loss = F.cross_entropy(output, y)
            loss.backward()
            grad = delta.grad.detach()
            d = delta[index]
            g = grad[index]
            d = torch.clamp(d + alpha * torch.sign(g), -eps, eps)
            d = torch.clamp(x[index] + d, 0, 1) - x[index]
            delta.data[index] = d
            delta.grad.zero_()
        all_loss = F.cross_entropy(model(x + delta), y, reduction="none").detach()
        max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
        max_loss = torch.max(max_loss, all_loss)
    model.zero_grad(set_to_none=True)
    return (x + max_delta).clamp(0, 1)


def robust_model(args):
    from aaer.data import load_dataset
    from aaer.models import build, load_state_dict_into
    from aaer.training import TrainConfig, train

    settings = dict(dataset="fashion-mnist", model="small-cnn", method="rs-fgsm",
                    epsilon=args.eps * 255, epochs=args.epochs, n_train=10000,
                    batch_size=128, lr_max=0.1, seed=0)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = f"/tmp/aaer_bench_eval_{key}"
    data = load_dataset("fashion-mnist")
    if not os.path.exists(os.path.join(out, "model.pt")):
        t0 = time.time()
        train(TrainConfig(out_dir=out, eval_protocol=None, progress=False, overwrite=True,
                          **settings), data)
        print(f"trained {settings} in {time.time() - t0:.0f} s -> {out}")
    model = build("small-cnn", data.num_classes, data.in_channels, data.image_size,
                  data.mean, data.std)
    load_state_dict_into(model.net, torch.load(os.path.join(out, "model.pt"),
                                               weights_only=True))
    return model.eval(), data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test points")
    ap.add_argument("--eps", type=float, default=0.1, help="training eps")
    ap.add_argument("--eval-eps", type=float, default=None, help="attack eps (default: --eps)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, data = robust_model(args)
    for p in model.parameters():
        p.requires_grad_(True)
    x = data.test_x[:args.n].float().div(255)
    y = data.test_y[:args.n]
    eps = args.eps if args.eval_eps is None else args.eval_eps
    alpha = eps / 4
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()

    t0 = time.perf_counter()
    x_ref = reference_pgd(model, x, y, eps, alpha, args.steps, args.restarts,
                          torch.Generator().manual_seed(0))
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    x_aaer = pgd(model, x, y, eps, alpha, args.steps, args.restarts,
                 generator=torch.Generator().manual_seed(0))
    t_aaer = time.perf_counter() - t0
    with torch.no_grad():
        ok_ref = model(x_ref).argmax(1) == y
        ok_aaer = model(x_aaer).argmax(1) == y
    print(f"small-cnn on Fashion-MNIST (trained at eps {args.eps}), eps {eps}, "
          f"PGD-{args.steps}-{args.restarts} step eps/4, {args.n} points, {args.threads} "
          f"thread(s); clean acc {clean:.4f}")
    print(f"reference: robust acc {ok_ref.float().mean().item():.4f}  {t_ref:7.1f} s")
    print(f"aaer pgd:  robust acc {ok_aaer.float().mean().item():.4f}  {t_aaer:7.1f} s")
    print(f"points robust for the reference but broken by aaer: {int((ok_ref & ~ok_aaer).sum())}"
          f"; the reverse (must be 0): {int((ok_aaer & ~ok_ref).sum())}")
    print(f"pgd_speedup: {t_ref / t_aaer:.2f}")


if __name__ == "__main__":
    main()
