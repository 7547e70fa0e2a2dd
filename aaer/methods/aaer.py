"""AAER: Abnormal Adversarial Examples Regularization (Lin, Yu, Liu, NeurIPS 2023).

The single-step attack of RS-/N-FGSM plus a regulariser on abnormal adversarial
examples (AAEs, the examples whose loss the attack step *lowered*, l0 > l1):

    loss = mean(l1) + lamda1 * (m/B) * (lamda2 * CEvar + lamda3 * max(AV - NV, 0))
    applied only when 0 < m < B                                           (SPEC §2, step 6)

Two modes:
- ``reference`` (default): exactly the published code. z0 and NV are constants and both
  l0 and l1 inside CEvar are detached, so the lamda2 term changes the loss *value* only;
  the hinge on AV carries the gradient (through z1).
- ``paper``: CEvar = mean over AAEs of (l0 - l1) with gradient through l1, as the
  paper's equation reads.

``aaer_regularizer`` is usable on its own in any training loop: give it the logits and
per-example losses of the two forward passes of a single-step attack.

With ``--label-smoothing S`` l0 and l1 are the smoothed losses (the attack ascends the
loss the model descends), so the AAE test l0 > l1 and CEvar are on them too. The FastAT
Benchmark's AAER (``fast_at/aaer.py``) never smooths: its attack, AAE test and training
loss use plain CE although it builds a smoothed criterion (docs/methods/fastat-benchmark.md,
"Label smoothing per method").
"""
from __future__ import annotations

import math

import torch

from aaer.checks import number
from aaer.errors import UsageError
from aaer.methods.base import StepContext, StepOutput, aae_statistics, with_defaults
from aaer.methods.fgsm import SingleStepAttack

AAER_MODES = ("reference", "paper")
MODES = AAER_MODES

# The seed script (AAER.py of the reference): without a method name, --clamp picks the
# variant and these are its flags' defaults (SPEC §4).
SEED_DEFAULTS = {"alpha": 1.0, "delta_init": "random", "clamp": 0,
                 "lamda1": 1.0, "lamda2": 4.0, "lamda3": 1.5}


def seed_method(clamp: int) -> str:
    """The method the seed script trains for --clamp: 1 RS-AAER, 0 N-AAER."""
    return "rs-aaer" if clamp == 1 else "n-aaer"


# Published hyper-parameters (SPEC §4): (dataset, eps in 1/255) -> (lamda2, lamda3); lamda1 = 1.
RS_LAMBDAS = {
    ("cifar10", 8): (2.5, 1.5), ("cifar10", 12): (5.0, 2.75),
    ("cifar10", 16): (7.0, 3.25), ("cifar10", 32): (5.75, 1.5),
    ("cifar100", 8): (3.5, 1.5), ("cifar100", 12): (3.5, 2.75),
    ("cifar100", 16): (6.0, 2.25), ("cifar100", 32): (5.0, 0.75),
}
N_LAMBDAS = {
    ("cifar10", 8): (1.5, 0.15), ("cifar10", 12): (5.0, 0.55),
    ("cifar10", 16): (8.5, 1.5), ("cifar10", 32): (2.75, 0.75),
    ("cifar100", 8): (1.5, 0.15), ("cifar100", 12): (3.5, 0.3),
    ("cifar100", 16): (6.0, 0.5), ("cifar100", 32): (3.5, 0.5),
}


def aaer_regularizer(z0, z1, l0, l1, lamda1: float, lamda2: float, lamda3: float,
                     mode: str = "reference", batch_sum=None):
    """The AAER term of one batch, without host synchronisation.

    z0, l0: logits and per-example CE at the attack's start x+eta (treated as constants);
    z1, l1: the same at the adversarial example (z1 carries gradient; l1 too in paper mode).
    batch_sum: under data parallelism, sums a tensor of per-rank sums over the global batch
    (aaer.distributed.batch_sum), so m, B, CEvar, AV and NV are the global batch's.
    Returns (reg, parts) where reg is a 0-dim tensor (0 unless 0 < m < B) and parts holds
    the batch's m, CEvar, AV, NV and whether the term was active, as tensors, and m_local,
    this process's AAE count.
    """
    if mode not in MODES:
        raise UsageError(f"AAER mode must be one of {MODES}, got {mode!r}")
    z0 = z0.detach().float()
    z1 = z1.float()
    l0 = l0.detach().float()
    l1_live = l1.float()
    l1_const = l1_live.detach()

    aae_mask = l0 > l1_const
    aae = aae_mask.float()
    l1_ce = l1_live if mode == "paper" else l1_const
    var = (z1 - z0).pow(2).sum(dim=1)                         # ||z1 - z0||^2
    m_local = aae.sum()
    sums = torch.stack([m_local, torch.full_like(m_local, l0.shape[0]),
                        (aae * (l0 - l1_ce)).sum(), (aae * var).sum(),
                        ((1.0 - aae) * var.detach()).sum()])
    if batch_sum is not None:
        sums = batch_sum(sums)
    m, B, ce_sum, av_sum, nv_sum = sums.unbind()

    active = (m > 0) & (m < B)
    m_safe = m.detach().clamp(min=1.0)
    nae_safe = (B - m).detach().clamp(min=1.0)
    ce_var = ce_sum / m_safe                                  # CEvar over AAEs
    av = av_sum / m_safe                                      # AV over AAEs
    nv = nv_sum.detach() / nae_safe                           # NV over NAEs: a constant
    m, B = m.detach(), B.detach()
    reg = lamda1 * (m / B) * (lamda2 * ce_var + lamda3 * torch.relu(av - nv))
    reg = torch.where(active, reg, torch.zeros_like(reg))
    return reg, {"m": m, "B": B, "ce_var": ce_var.detach(), "av": av.detach(), "nv": nv,
                 "active": active, "m_local": m_local}


class AAER(SingleStepAttack):
    """RS-AAER (clamp=1, alpha 1.25) or N-AAER (clamp=0, alpha 1.0)."""

    name = "aaer"
    # a rollback raises the regulariser's weight first; --rollback-change step shrinks alpha
    strengthen_by = {"regularizer": "lamda1", "step": "alpha"}
    # the reference's per-epoch log (SPEC §2): AAE count, mean CEvar, mean (AV - NV)
    log_columns = SingleStepAttack.log_columns + (("Ab CE Loss", "aaer_ce_var", "%.4f"),
                                                  ("Ab L2 Loss", "aaer_var_gap", "%.4f"))
    description = "single-step AT + regulariser on abnormal adversarial examples"
    source = "Lin, Yu, Liu, NeurIPS 2023"
    lambdas: dict | None = None     # the published (lamda2, lamda3) per (data set, eps)

    def __init__(self, eps, alpha=1.0, delta_init="random", clamp=0, warmup_epochs=0.0,
                 lamda1=1.0, lamda2=4.0, lamda3=1.5, mode="reference", norm="linf"):
        super().__init__(eps, alpha, delta_init, clamp, warmup_epochs, norm)
        self.lamda1, self.lamda2, self.lamda3 = (number(k, v, low=0) for k, v in (
            ("lamda1", lamda1), ("lamda2", lamda2), ("lamda3", lamda3)))
        if mode not in MODES:
            raise UsageError(f"AAER mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    @classmethod
    def published(cls, dataset: str, epsilon: float, norm: str = "linf"):
        return None if cls.lambdas is None else _published(cls.lambdas, dataset, epsilon, norm)

    def hparams(self):
        return {**super().hparams(), "lamda1": self.lamda1, "lamda2": self.lamda2,
                "lamda3": self.lamda3, "mode": self.mode}

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, l0, z1, l1, _ = self.attack(model, x, y, ctx)
        reg, parts = aaer_regularizer(z0, z1, l0, l1, self.lamda1, self.lamda2,
                                      self.lamda3, self.mode, ctx.batch_sum)
        stats = aae_statistics(z0, z1.detach(), l0, l1.detach(), y, self.aae_num_classes)
        # the reference's per-epoch log: CEvar and AV - NV, weighted by m, when active
        # (this process's m: the sums are added up over processes once per epoch)
        on = parts["active"].float() * parts["m_local"]
        stats["aaer_ce_var_sum"] = on * parts["ce_var"]
        stats["aaer_var_gap_sum"] = on * (parts["av"] - parts["nv"])
        stats["aaer_reg_sum"] = reg.detach() * l1.shape[0]
        # the part of the term that carries gradient in reference mode (the hinge), and the
        # share of examples whose batch had it switched on (AV > NV): where it is off, the
        # step is plain single-step AT
        hinge_on = (parts["active"] & (parts["av"] > parts["nv"])).float() * l1.shape[0]
        stats["aaer_hinge_on_sum"] = hinge_on
        stats["aaer_hinge_reg_sum"] = hinge_on * (self.lamda1 * self.lamda3 * parts["m"]
                                                  / parts["B"] * (parts["av"] - parts["nv"]))
        return StepOutput(loss=l1.mean() + reg, logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        m = sums.get("aae_count", 0.0)
        # the reference divides by the epoch's AAE count (+1e-10)
        out["aaer_ce_var"] = sums.get("aaer_ce_var_sum", 0.0) / (m + 1e-10)
        out["aaer_var_gap"] = sums.get("aaer_var_gap_sum", 0.0) / (m + 1e-10)
        out["aaer_reg"] = sums.get("aaer_reg_sum", 0.0) / n if n else 0.0
        out["aaer_hinge_on"] = sums.get("aaer_hinge_on_sum", 0.0) / n if n else 0.0
        out["aaer_hinge_reg"] = sums.get("aaer_hinge_reg_sum", 0.0) / n if n else 0.0
        return out


class RSAAER(AAER):
    name = "rs-aaer"
    description = "RS-AAER: RS-FGSM attack (U(-eps,eps), step 1.25 eps, projected) + AAER"
    lambdas = RS_LAMBDAS        # the defaults lamda2, lamda3: its cifar10 eps 8 entry
    __init__ = with_defaults(AAER.__init__, alpha=1.25, clamp=1, lamda2=2.5, lamda3=1.5)


class NAAER(AAER):
    name = "n-aaer"
    description = "N-AAER: N-FGSM attack (U(-2eps,2eps), step eps, no projection) + AAER"
    lambdas = N_LAMBDAS         # the defaults lamda2, lamda3: its cifar10 eps 8 entry
    __init__ = with_defaults(AAER.__init__, alpha=1.0, clamp=0, lamda2=1.5, lamda3=0.15)


def _published(table, dataset: str, eps255: float, norm: str = "linf"):
    """Published {lamda2, lamda3} for a data set and eps, and where they come from.

    Outside the table (other data sets or radii) the entry of the same data set (CIFAR-10
    for data sets without a table) at the nearest eps in log scale is used, and the source
    says so: "published cifar10 eps 16" or "nearest published: cifar10 eps 32 (none for
    fashion-mnist eps 70)".
    """
    ds = dataset if dataset in ("cifar10", "cifar100") else "cifar10"
    if norm == "l2":       # the paper has no L2 runs: the pair of the standard CIFAR radii
        l2, l3 = table[(ds, 8)]
        return {"lamda2": l2, "lamda3": l3}, (f"no published value for L2: the {ds} L-inf eps "
                                              "8 entry (L2 0.5 and L-inf 8/255 are the "
                                              "standard CIFAR pair)")
    radii = sorted({e for (d, e) in table if d == ds})
    nearest = min(radii, key=lambda e: abs(math.log(e) - math.log(max(eps255, 1e-6))))
    exact = ds == dataset and abs(nearest - eps255) < 1e-9
    source = (f"published {dataset} eps {nearest:g}" if exact else
              f"nearest published: {ds} eps {nearest:g} (none for {dataset} eps {eps255:.4g})")
    l2, l3 = table[(ds, nearest)]
    return {"lamda2": l2, "lamda3": l3}, source
