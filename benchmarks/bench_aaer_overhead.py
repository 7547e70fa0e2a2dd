"""What AAER costs on top of its attack: RS-AAER step time / RS-FGSM step time in aaer.

Both are ``Trainer.train_step`` on the same model, weights and batch; they differ only in
the regulariser (a few element-wise ops on the B x K logits, no extra forward or backward).
The two steps alternate so that machine load hits both alike; the headline is the median
of the per-pair time ratios. The regulariser alone is also timed on its own inputs. On
CPU the clock is this process's CPU time and one thread is used, which other load on a
shared machine disturbs least.
Last line: ``aaer_overhead: <ratio>`` (goal <= 1.02).

    python benchmarks/bench_aaer_overhead.py                   # PreActResNet18, batch 32, CPU
    python benchmarks/bench_aaer_overhead.py --device cuda --batch-size 128 --repeats 50
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import (make_trainer, random_batch, step_timing_parser,  # noqa: E402
                              timed, timing_setup)


def main(argv=None):
    args = step_timing_parser(__doc__, 5, "timed steps per method").parse_args(argv)
    device, clock = timing_setup(args)
    from aaer.methods import StepContext, aaer_regularizer
    from aaer.engine import close_logger

    with tempfile.TemporaryDirectory() as tmp:
        aaer = make_trainer(args.model, "rs-aaer", args.batch_size, device,
                            os.path.join(tmp, "aaer"))
        fgsm = make_trainer(args.model, "rs-fgsm", args.batch_size, device,
                            os.path.join(tmp, "fgsm"))
        x, y = random_batch(args.batch_size, device)
        ctx = StepContext(0, 0, 1, 1)
        for tr in (aaer, fgsm):                       # warm-up, untimed
            tr.train_step(x, y, ctx)
        times = {"rs-aaer": [], "rs-fgsm": []}
        for r in range(args.repeats):
            order = [("rs-aaer", aaer), ("rs-fgsm", fgsm)]
            for name, tr in (order if r % 2 else order[::-1]):
                times[name].append(timed(lambda: tr.train_step(x, y, ctx), device, clock))

        # the regulariser on its own, on this batch's logits
        m = aaer.method
        z0, l0, z1, l1, _ = m.attack(aaer.model, x, y, ctx)
        z1, l1 = z1.detach().requires_grad_(True), l1.detach()
        reg_t = [timed(lambda: aaer_regularizer(z0, z1, l0, l1, m.lamda1, m.lamda2, m.lamda3,
                                                m.mode)[0].backward(), device, clock)
                 for _ in range(20)]
        for tr in (aaer, fgsm):
            close_logger(tr.log)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads "
          f"{torch.get_num_threads()}, {args.repeats} timed steps each, {clock} clock")
    for k, v in times.items():
        print(f"{k:8s} step s: " + " ".join(f"{t:.4f}" for t in v) + f"  (median {med[k]:.4f})")
    reg = statistics.median(reg_t)
    print(f"regulariser alone (forward + backward on the logits): {reg * 1e3:.3f} ms = "
          f"{100 * reg / med['rs-fgsm']:.3f}% of an RS-FGSM step")
    # back-to-back pairs: the median of per-pair ratios cancels load that drifts over the run
    ratio = statistics.median(a / f for a, f in zip(times["rs-aaer"], times["rs-fgsm"]))
    print(f"ratio of medians {med['rs-aaer'] / med['rs-fgsm']:.3f}; median of per-pair "
          f"ratios {ratio:.3f}")
    print(f"aaer_overhead: {ratio:.3f}")


if __name__ == "__main__":
    main()
