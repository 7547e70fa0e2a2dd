"""Seconds per training step of every registered method, relative to RS-FGSM.

One "step" is what the training loop does per call of method.step: the step itself,
zero_grad, backward and the optimiser step. A minibatch is ``replays`` steps (Free-AT: m).
Same model, weights, batch and random data (32x32x3, 10 classes) for every method; one
untimed warm-up round, then --repeats timed rounds, methods interleaved; the table gives the
median (and the minimum) per method.

    python benchmarks/bench_methods.py [--models small-cnn:128,preactresnet18:32]
                                       [--repeats 5] [--threads 2] [--device cpu]
                                       [--methods rs-fgsm,r-lap]

Prints one table per model and, last, the line ``methods_bench: done``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aaer.methods import METHODS, StepContext, create_method  # noqa: E402
from aaer.methods.base import ExampleMemory, Weights  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(model_name, batch_size, repeats, device, names=tuple(METHODS)):
    """Methods are timed round-robin (one minibatch each per round), so that a slow patch
    of a shared machine hits every method alike."""
    from aaer.models import build

    torch.manual_seed(0)
    model = build(model_name, 10, 3, 32, CIFAR_MEAN, CIFAR_STD).to(device).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    methods = {name: create_method(name, 8 / 255) for name in names}
    opts = {name: torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            for name in names}
    # the loop's loans: the weights (LAP perturbs them and steps the optimiser inside its
    # step), and per-example memory for the batch's examples (FGSM-PGI, FGSM-PCO, ...)
    index = torch.arange(batch_size, device=device)

    def memory(method):
        spec = method.memory_spec(tuple(x.shape[1:]))
        return ExampleMemory({k: torch.full((batch_size, *s.shape), s.fill, dtype=s.dtype,
                                            device=device) for k, s in spec.items()}) \
            if spec else None
    ctxs = {name: StepContext(weights=Weights(model.net, opts[name]), index=index,
                              memory=memory(methods[name])) for name in names}
    times = {name: [] for name in names}

    def minibatch(name):
        method, opt, ctx = methods[name], opts[name], ctxs[name]
        for _ in range(method.replays):
            out = method.step(model, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            ctx.weights.restore()
            opt.step()

    for r in range(repeats + 1):                  # round 0: untimed warm-up
        for name in names:
            model.load_state_dict(state)          # every minibatch from the same weights
            torch.manual_seed(r)
            sync(device)
            t0 = time.perf_counter()
            minibatch(name)
            sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
        print(f"  round {r}/{repeats} done", file=sys.stderr, flush=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    base = med["rs-fgsm"] / methods["rs-fgsm"].replays
    base_min = min(times["rs-fgsm"])
    print(f"\n{model_name}, batch {batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"median (and min) of {repeats} round-robin repeats; x = relative to rs-fgsm")
    print(f"{'method':<12} {'fwd':>4} {'bwd':>4} {'2bp':>4} {'replays':>7} {'s/step':>9} "
          f"{'x step':>7} {'s/minibatch':>12} {'x minibatch':>12} {'min s/mb':>9} "
          f"{'x (min)':>8}")
    for name, m in methods.items():
        c = m.cost()
        per_step = med[name] / m.replays
        print(f"{name:<12} {c.forward:>4} {c.backward:>4} {'yes' if c.double_backprop else '':>4} "
              f"{m.replays:>7} {per_step:>9.4f} {per_step / base:>7.2f} {med[name]:>12.4f} "
              f"{med[name] / base:>12.2f} {min(times[name]):>9.4f} "
              f"{min(times[name]) / base_min:>8.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small-cnn:128,preactresnet18:32",
                   help="comma-separated model:batch pairs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated methods to time (rs-fgsm, the baseline, is added)")
    args = p.parse_args(argv)
    names = list(dict.fromkeys(["rs-fgsm"] + args.methods.split(",")))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for item in args.models.split(","):
        name, _, bs = item.partition(":")
        if not bs.isdigit() or int(bs) < 1:
            raise SystemExit(f"--models entry {item!r}: expected model:batch, e.g. small-cnn:128")
        bench_model(name, int(bs), args.repeats, device, names)
    print("methods_bench: done")


if __name__ == "__main__":
    main()
