"""NuAT, Nuclear-Norm Adversarial Training (Sriramanan, Addepalli, Baburaj, Babu,
NeurIPS 2021).

The regulariser is the nuclear norm (sum of singular values) of the B x K matrix of the
batch's logit differences, ||Zc - Z||_* / B: unlike a per-example distance it couples the
examples of the batch, and it is small only when the differences span few directions,
which pushes the model to be smooth around the data as a whole. The attack maximises the
same term from a Bernoulli start:

    attack:  maximise  mean CE(f(x0), y) + a lambda_e ||f(x) - f(x0)||_* / B,  a = 1 on odd batches
    loss  =  mean CE(f(x), y) + lambda_e ||f(x) - f(x_adv)||_* / B

with the step of ``aaer.methods.anchored`` (train-mode clean forward as the anchor,
eval-mode attack, train-mode adversarial then clean forwards). Cross-entropy on the CLEAN
image only; gradient through both logit matrices.

Written spec: docs/methods/nuat.md. Official code: val-iisc/NuAT @ 8962290,
``CIFAR10/NuAT_cifar10.py`` (``NucAttack``, training loop). Beyond the README's equations
the code uses the term in the attack on odd batches only (``alt = counter % 2``) and
ramps lambda from 0: lambda_e = Nuc_max min(e, E - 10) / (E - 10), constant within an
epoch. aaer writes the ramp as a fraction of the run, lambda_e = nuc_max min(e / (ramp E),
1) with ramp 0.9 (= (E - 10) / E at the published E = 100; other budgets scale); ramp 1.0
is NuAT-WA's ``4 e / E``, ramp 0 a constant lambda (the README). The official divisor is
the constant batch size 64 (also for the last, partial batch); here it is the batch's
actual size.

The nuclear norm is computed from the K x K Gram matrix G = A^T A = sum_i a_i a_i^T of the
difference matrix A (``nuclear_norm``). G is a sum over examples, so under data
parallelism one all-reduce (``ctx.batch_sum``) gives the whole batch's: the term is the
global batch's nuclear norm, not a sum of per-process ones (which would differ:
||[A1; A2]||_* <= ||A1||_* + ||A2||_*). Value and gradient are those of the SVD
(torch.linalg.matrix_norm(A, 'nuc')): the gradient is the polar factor U V^T; no double
backprop. On CUDA the eigen-decomposition synchronises with the host once per call, as the
official code's SVD does; it runs in float64 on a K x K matrix.

Recipe (``published``): CIFAR-10 eps 8/255: Nuc_max 4.5, ramp over E - 10 epochs,
Bernoulli start 4/255 (noise_scale 0.5), step and radius 8/255 (alpha 1), odd batches;
the only published setting (other data sets and radii take it, marked "nearest
published"). The authors' schedule: 100 epochs, batch 64, SGD 0.9, wd 5e-4, CyclicLR
0 -> 0.1 over 40 epochs then down (to 0 over 50 epochs) stepped per iteration only in
epochs 0-79, where it stops at 0.02, then 0.002 after epoch 85 and 0.0002 after epoch 90.
This cyclic-then-step schedule cannot be expressed by aaer's settings and is not
imitated: NuAT has no ``train_overrides`` and aaer trains it under the run's schedule.
NuAT-WA (``NuAT_WA_cifar10.py``: Nuc_max 4.0 ramped over all epochs, CyclicLR 0 -> 0.1
peaking at 1/4, EMA 0.9998) is ``--set nuc_max=4.0 --set ramp=1.0 --lr-max 0.1
--lr-peak 0.25 --weight-average 0.9998 --epochs 100 --batch-size 64``.

Cost: Cost(4, 3) as GAT (the official code's attack backward also fills discarded weight
gradients). ``--on-co rollback`` doubles nuc_max (every later lambda_e, in the attack and
the loss); ``--rollback-change step`` shrinks alpha. L2: refused (Bernoulli start on the
cube's vertices, sign step, no published L2 setting).

The FastAT Benchmark's NuAT (fzjcdt/FastAT_Benchmark ``fast_at/nu_at.py``) runs the attack
forward in train mode, uses label-smoothed CE (aaer: ``--label-smoothing 0.4``), Nuc_max
4.0 with NuAT-WA's ramp, batch 128; aaer follows the official NuAT code.
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.anchored import CleanAnchored
from aaer.methods.base import published_entry
from aaer.methods.noise import check_nonnegative

PUBLISHED = {("cifar10", 8): {"nuc_max": 4.5, "ramp": 0.9, "noise_scale": 0.5,
                              "alpha": 1.0, "attack_term": "odd"}}


def nuclear_norm(a, batch_sum=None):
    """||A||_*, the sum of the singular values of the matrix whose rows are the rows of
    ``a`` (B x K) on every process; ``batch_sum`` sums a tensor over the processes (None:
    this process holds the whole batch).

    From the eigen-decomposition G = V diag(s^2) V^T of G = A^T A (float64), the polar
    factor M = A V diag(1/s) V^T (= U V^T; singular values below K * machine eps of the
    largest count as 0) is the gradient of ||A||_*, and ||A||_* = <M, A>. The returned
    value is <M, A> with M held constant: the norm, whose gradient is M.
    """
    with torch.autocast(a.device.type, enabled=False):
        a = a if a.dtype == torch.float64 else a.float()
        a64 = a.detach().double()
        gram = a64.T @ a64
        if batch_sum is not None:
            gram = batch_sum(gram)
        lam, v = torch.linalg.eigh(gram)
        s = lam.clamp(min=0.0).sqrt()
        keep = s > s.max() * gram.shape[0] * torch.finfo(a.dtype).eps
        inv = torch.where(keep, 1.0 / s.clamp(min=torch.finfo(torch.float64).tiny),
                          torch.zeros_like(s))
        polar = ((a64 @ v) * inv) @ v.T
        part = (polar.to(a.dtype) * a).sum()
        return part if batch_sum is None else batch_sum(part)


class NuAT(CleanAnchored):
    name = "nuat"
    description = ("CE on clean + lambda * ||logits(x) - logits(x_adv)||_* / B (batch "
                   "nuclear norm), same-term attack from a Bernoulli start")
    source = "Sriramanan et al., NeurIPS 2021 (val-iisc/NuAT)"
    strengthen_by = {"regularizer": "nuc_max", "step": "alpha"}
    log_columns = (("Nuc", "nuat_distance", "%.4f"), ("Lambda", "nuat_lambda", "%.4g"))
    prefix = "nuat"

    def __init__(self, eps, nuc_max=4.5, ramp=0.9, alpha=1.0, noise_scale=0.5,
                 attack_term="odd", norm="linf"):
        super().__init__(eps, alpha, noise_scale, attack_term, norm)
        self.nuc_max = check_nonnegative("nuc_max (NuAT weight at the end of its ramp)",
                                         nuc_max)
        self.ramp = check_nonnegative("ramp (fraction of the epochs over which NuAT's "
                                      "lambda rises from 0 to nuc_max)", ramp)
        if self.ramp > 1:
            raise UsageError(f"invalid ramp (fraction of the epochs over which NuAT's lambda "
                             f"rises from 0 to nuc_max) {ramp!r}: must be in [0, 1]")

    @classmethod
    def published(cls, dataset, epsilon, norm="linf"):
        return None if norm != "linf" else published_entry(PUBLISHED, dataset, epsilon)

    def hparams(self):
        return {"eps": self.eps, "nuc_max": self.nuc_max, "ramp": self.ramp,
                "alpha": self.alpha, "noise_scale": self.noise_scale,
                "attack_term": self.attack_term, "norm": self.norm}

    def weight(self, epoch: int, total_epochs: int) -> float:
        if self.ramp == 0:
            return self.nuc_max
        return self.nuc_max * min(epoch / (self.ramp * total_epochs), 1.0)

    def distance(self, zc, z, batch_sum=None):
        a = zc - z
        if batch_sum is None:
            return nuclear_norm(a) / a.shape[0]
        rows = batch_sum(torch.full((), float(a.shape[0]), dtype=a.dtype, device=a.device))
        return nuclear_norm(a, batch_sum) / rows
