"""aaer's FAB against the official one (fra31/auto-attack), side by side, bit for bit.

1. The hyperplane-box projection (aaer.attacks.fab.project_hyperplane_box vs the official
   projection_linf / projection_l2) in float64 and float32 on fixed rows: random, 8-bit
   pixels (tied rooms), pixels at 0/1, zero weights, weights below 1e-8 or exactly 1e-8,
   small (1e-7) and tiny (1e-13) gradients, weights over many decades, gaps from 0 (on the
   plane) to beyond the corner, and two hand-made L2 rows (a free weight that cancels to 0;
   a gap between the corner's reach and the all-free bound). Prints the largest
   |aaer - official| and how many rows are not bit-identical.
2. FAB and FAB-T (L-inf eps 0.1, L2 eps 2: every point is broken, so every adversarial
   image is the end of a 100-step trajectory; FAB with 2 restarts, the second from a
   random start) on 40 8-bit 3x16x16 images through a fixed random CNN, float32 CPU: how
   many adversarial images are identical.

The official package is not a dependency: point --official at a checkout (the folder that
holds autoattack/; it needs only torch). --projection FILE swaps in another module's
project_hyperplane_box (e.g. an older aaer fab.py) to see what differed.

    python benchmarks/fab_vs_official.py --official /tmp/auto-attack       # ~3 min, 1 thread
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aaer.attacks.fab as fab  # noqa: E402


def projection_rows(dim, n, dtype, g):
    rand = lambda *s: torch.rand(*s, generator=g, dtype=dtype)
    randn = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    t, w = rand(n, dim), randn(n, dim)
    pixels = torch.round(t * 255) / 255
    edge = rand(n, dim)
    sat = t.clone()
    sat[edge < .125], sat[edge > .875] = 0, 1
    zero_w, below, at = w.clone(), w.clone(), w.clone()
    zero_w[rand(n, dim) < .3] = 0
    below[rand(n, dim) < .3] *= 1e-9
    at[:, ::3] = 1e-8
    weights = {"random": (t, w), "8-bit": (pixels, w), "at 0/1": (sat, w),
               "zero w": (sat, zero_w), "|w|<1e-8": (sat, below), "|w|=1e-8": (sat, at),
               "w~1e-7": (t, w * 1e-7), "w~1e-13": (t, w * 1e-13),
               "w over decades": (pixels, w * torch.exp(4 * randn(n, dim)))}
    rows = {}
    for name, (tt, ww) in weights.items():
        scale = (ww.abs() * 0.5).sum(1)
        for gap_name, gap in (("near", 0.05 * scale * randn(n)), ("mid", scale * randn(n)),
                              ("far", 3 * scale * randn(n)), ("on", 0 * scale)):
            rows[f"{name}/{gap_name}"] = (tt, ww, (ww * tt).sum(1) + gap)
    return rows


def hand_rows(dtype):
    t = torch.full((1, 3), .5, dtype=dtype)
    w = torch.tensor([[1e4, 1e4, 1.5e-8]], dtype=dtype)
    t2 = torch.full((1, 11), .5, dtype=dtype)
    w2 = torch.full((1, 11), 9e-9, dtype=dtype)
    w2[0, 0] = 1.
    one = torch.tensor(1., dtype=dtype)
    gap2 = torch.tensor([.5], dtype=dtype).nextafter(one).nextafter(one)
    return {"cancelled free weight": (t, w, (w * t).sum(1) - (1e4 + 5e-9)),
            "all-free and out of reach": (t2, w2, (w2 * t2).sum(1) - gap2)}


def compare_projections(project, official):
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        for norm in ("Linf", "L2"):
            worst, differ, total = 0., 0, 0
            rows = [r for dim in (1, 2, 5, 64, 3072)
                    for r in projection_rows(dim, 32, dtype, g).values()]
            for t, w, b in rows + list(hand_rows(dtype).values()):
                ours, theirs = project(t, w, b, norm), official[norm](t, w, b)
                worst = max(worst, (ours - theirs).abs().max().item())
                differ += (ours != theirs).any(1).sum().item()
                total += len(t)
            print(f"projection {norm:4s} {str(dtype)[6:]}: max |aaer - official| {worst:.3g}, "
                  f"rows not bit-identical {differ}/{total}")


def compare_fab(official_fab):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 2, 1),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.round(torch.rand(40, 3, 16, 16, generator=g) * 255) / 255
    edge = torch.rand(x.shape, generator=g)
    x[edge < .1], x[edge > .9] = 0, 1
    y = model(x).argmax(1)
    for norm, eps in (("Linf", 0.1), ("L2", 2.0)):
        for targeted in (False, True):
            kw = dict(norm=norm, eps=eps, n_iter=100, n_restarts=1 if targeted else 2, seed=0)
            if targeted:
                kw["n_target_classes"] = 9
            ours = (fab.FABT(model, **kw) if targeted else fab.FAB(model, **kw)).perturb(x, y)
            theirs = official_fab(model, targeted=targeted, device="cpu", **kw).perturb(x, y)
            same = (ours == theirs).flatten(1).all(1).sum().item()
            broken = (model(ours).argmax(1) != y).sum().item()
            print(f"{'FAB-T' if targeted else 'FAB':5s} {norm:4s}: adversarial images identical "
                  f"{same}/{len(x)} (broken {broken}), max |aaer - official| "
                  f"{(ours - theirs).abs().max().item():.3g}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="checkout holding autoattack/")
    p.add_argument("--projection", help="a .py file whose project_hyperplane_box to test")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.official)
    from autoattack.fab_projections import projection_l2, projection_linf
    from autoattack.fab_pt import FABAttack_PT
    if a.projection:
        spec = importlib.util.spec_from_file_location("other_fab", a.projection)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        fab.project_hyperplane_box = other.project_hyperplane_box
    compare_projections(fab.project_hyperplane_box, {"Linf": projection_linf, "L2": projection_l2})
    compare_fab(FABAttack_PT)


if __name__ == "__main__":
    main()
