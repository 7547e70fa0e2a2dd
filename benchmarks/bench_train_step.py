"""One RS-AAER training step two ways: the reference loop (SPEC §2) and aaer's Trainer.

The reference loop is transcribed with its own idioms: the attack gradient by
``loss.backward()`` (which also computes weight gradients that are then zeroed),
per-example boolean indexing for the AAE statistics, ``.item()`` for m, NV and the
running totals, and Python ``max`` for the hinge. aaer's step is ``Trainer.train_step``:
input-only attack gradient, masks instead of indexing, statistics left on the device.

Both start from the same weights and draw the same noise for two untimed steps, whose
losses must agree (the weight difference after them is printed). Then the two steps
alternate (so machine load hits both alike); the headline is the median of the
per-repeat time ratios. On CPU the clock is this process's CPU time and one thread is
used, which other load on a shared machine disturbs least (--clock wall, --threads N).
Last line: ``train_step_speedup: <reference time / aaer time>``.

    python benchmarks/bench_train_step.py                      # PreActResNet18, batch 32, CPU
    python benchmarks/bench_train_step.py --batch-size 128 --device cuda --repeats 20
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


class ReferenceLoop:
    """SPEC §2, one iteration of the reference's training loop (RS or N variant of AAER)."""

    def __init__(self, model, opt, sched, eps, alpha, clamp, lamda1, lamda2, lamda3):
        self.model, self.opt, self.sched = model, opt, sched
        self.eps, self.alpha, self.clamp = eps, alpha, clamp
        self.lamda1, self.lamda2, self.lamda3 = lamda1, lamda2, lamda3
        self.train_loss = self.train_acc = self.train_n = self.ab_num = 0

    def step(self, X, y):
        eps, alpha, model = self.eps, self.alpha, self.model
        delta = torch.zeros_like(X)
        if self.clamp:
            delta.uniform_(-eps, eps)
        else:
            delta.uniform_(-2 * eps, 2 * eps)
        delta.data = torch.max(torch.min(delta, 1 - X), 0 - X)
        delta.requires_grad = True
        output = model(X + delta)
        loss_vec = F.cross_entropy(output, y, reduction="none")
        loss_before = loss_vec.detach()
        output_before = output.detach()
        loss_vec.mean().backward()                      # weight gradients too, then discarded
        grad = delta.grad.detach()
        delta.data = delta + alpha * torch.sign(grad)
        if self.clamp:
            delta.data = torch.clamp(delta, -eps, eps)
        delta.data = torch.max(torch.min(delta, 1 - X), 0 - X)
        delta = delta.detach()

        output = model(torch.clamp(X + delta, 0, 1))
        adv_vec = F.cross_entropy(output, y, reduction="none")
        loss = adv_vec.mean()
        abnormal = loss_before > adv_vec.detach()
        m = abnormal.sum().item()
        B = y.size(0)
        if 0 < m < B:
            ce_var = (loss_before[abnormal] - adv_vec.detach()[abnormal]).mean()
            av = ((output[abnormal] - output_before[abnormal]) ** 2).sum(1).mean()
            nv = ((output.detach()[~abnormal] - output_before[~abnormal]) ** 2).sum(1).mean().item()
            loss = loss + self.lamda1 * (m / B) * (self.lamda2 * ce_var
                                                   + self.lamda3 * max(av - nv, 0))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.train_loss += loss.item() * B
        self.train_acc += (output.max(1)[1] == y).sum().item()
        self.train_n += B
        self.ab_num += m
        return loss


def random_cifar(n, seed=0, size=32, channels=3):
    from aaer.data import Dataset
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("cifar10", x, y, x[:8].clone(), y[:8].clone(), [f"c{i}" for i in range(10)],
                   CIFAR_MEAN[:channels], CIFAR_STD[:channels], source="random")


def make_trainer(model, method, batch_size, device, out_dir, epochs=1, n=None, **kw):
    """aaer's Trainer on random CIFAR-shaped data (no files besides its run directory)."""
    from aaer.training import TrainConfig, build_trainer
    n = n or 4 * batch_size
    cfg = TrainConfig(out_dir=out_dir, model=model, method=method, epochs=epochs,
                      batch_size=batch_size, eval_protocol=None, progress=False,
                      device=str(device), seed=0, **kw)
    return build_trainer(cfg, random_cifar(n))


def reference_for(trainer):
    """A ReferenceLoop on a copy of the trainer's (untrained) model, with the same optimiser
    settings and schedule."""
    from aaer.engine import make_scheduler
    cfg, m = trainer.cfg.optim, trainer.method
    model = copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, cfg, trainer.total_steps)
    return ReferenceLoop(model, opt, sched, m.eps, m.alpha * m.eps, m.clamp, m.lamda1,
                         m.lamda2, m.lamda3)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, clock="wall"):
    """Seconds of one call: wall clock, or this process's CPU time (all threads), which a
    shared, loaded machine disturbs far less."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync(device)
    t = now()
    fn()
    sync(device)
    return now() - t


def step_timing_parser(doc: str, repeats: int, repeats_help: str) -> argparse.ArgumentParser:
    """The flags the step-timing benchmarks share: model, batch, repeats, device, threads,
    clock."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="preactresnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU default: 1)")
    p.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                   help="auto: process CPU time on CPU (robust to other load), wall on CUDA")
    return p


def timing_setup(args):
    """(device, clock) for parsed step-timing flags; one CPU thread unless --threads."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    clock = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "cpu")
    return device, clock


def random_batch(batch_size, device):
    """The fixed CIFAR-shaped batch the step benchmarks time."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    return x, y


def main(argv=None):
    p = step_timing_parser(__doc__, 3, "timed steps per path")
    p.add_argument("--method", default="rs-aaer", choices=["rs-aaer", "n-aaer"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    args = p.parse_args(argv)
    from aaer.methods import StepContext

    device, clock = timing_setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args.model, args.method, args.batch_size, device, tmp,
                               channels_last=args.channels_last)
        ref = reference_for(trainer)
        x, y = random_batch(args.batch_size, device)
        ctx = StepContext(0, 0, 1, 1)

        # two checked steps per path with the same noise (the cyclic schedule's first lr is
        # 0, so only the second step moves the weights); also the untimed warm-up
        losses = {"ref": [], "aaer": []}
        for seed in (123, 124):
            torch.manual_seed(seed)
            losses["ref"].append(ref.step(x, y).item())
            torch.manual_seed(seed)
            losses["aaer"].append(trainer.train_step(x, y, ctx).loss.item())
        w_diff = max((a - b).abs().max().item() for a, b in
                     zip(ref.model.parameters(), trainer.model.parameters()))
        for i, (l_ref, l_aaer) in enumerate(zip(losses["ref"], losses["aaer"])):
            print(f"step {i + 1}: reference loss {l_ref:.6f}, aaer loss {l_aaer:.6f}")
            if abs(l_ref - l_aaer) > 1e-4 * max(1.0, abs(l_ref)):
                raise SystemExit(f"the two steps disagree at step {i + 1}: {l_ref} vs {l_aaer}")
        print(f"max weight difference after 2 steps: {w_diff:.2e}")
        t_ref, t_aaer = [], []

        for r in range(args.repeats):                 # alternate, so load hits both alike
            order = [("ref", ref), ("aaer", trainer)] if r % 2 else \
                [("aaer", trainer), ("ref", ref)]
            for name, obj in order:
                if name == "ref":
                    t_ref.append(timed(lambda: ref.step(x, y), device, clock))
                else:
                    t_aaer.append(timed(lambda: trainer.train_step(x, y, ctx), device, clock))
        med_ref, med_aaer = statistics.median(t_ref), statistics.median(t_aaer)
        # each repeat times the two steps back to back: the median of the per-repeat
        # ratios cancels load that drifts over the run
        speedup = statistics.median(r / a for r, a in zip(t_ref, t_aaer))
        print(f"model {args.model}, method {args.method}, batch {args.batch_size}, device "
              f"{device}, threads {torch.get_num_threads()}, channels_last "
              f"{trainer.channels_last}, {args.repeats} timed steps each, {clock} clock")
        print("reference step s: " + " ".join(f"{t:.3f}" for t in t_ref))
        print("aaer step s:      " + " ".join(f"{t:.3f}" for t in t_aaer))
        print(f"median: reference {med_ref:.3f} s, aaer {med_aaer:.3f} s")
        from aaer.engine import close_logger
        close_logger(trainer.log)
        print(f"ratio of medians {med_ref / med_aaer:.3f}; median of per-repeat ratios "
              f"{speedup:.3f}")
        print(f"train_step_speedup: {speedup:.3f}")


if __name__ == "__main__":
    main()
