"""The step GAT and NuAT share: clean cross-entropy plus a distance D between the model's
outputs on the clean and the adversarial batch, with an attack that maximises the same D.

    zc = f(x)                          train mode (the attack's anchor; a BatchNorm update)
    x0 = clip01(x + b eps s)           s = +-1 per pixel, probability 1/2 (Bernoulli start)
    z0 = f(x0)                         eval mode
    J  = mean CE(z0, y) + a lambda_e D(zc, z0)      a = 1 on odd batches of the epoch, else 0
    x1 = clip01(x0 + alpha eps sign(grad_x0 J))
    x_adv = clip01(x + clip_eps(x1 - x))
    z1 = f(x_adv), then zc2 = f(x)     train mode, in this order (two BatchNorm updates)
    loss = mean CE(zc2, y) + lambda_e D(zc2, z1)    gradient through zc2 and z1

Sriramanan et al. wrote both methods on the same script (val-iisc/GAMA-GAT
``CIFAR10/GAT_cifar10.py``, val-iisc/NuAT ``CIFAR10/NuAT_cifar10.py``): GAT's D is the
squared L2 distance of the softmax outputs, NuAT's the nuclear norm of the batch's logit
differences; the schedules of lambda_e differ. The defaults b = 1/2, alpha = 1 are their
CIFAR-10 values (B_val 4/255, Feps 8/255 at eps 8/255; the projection radius, hard-coded
8/255 there, is eps here). zc carries no gradient into the attack (the code's
``cost.backward()`` also fills weight gradients through it, which ``zero_grad`` discards);
here it is computed without a graph. The attack's input gradient is that of B J (a
positive multiple: the same sign step, and no float16 underflow of a batch mean).

Train accuracy is measured on z1 (aaer's convention; the official scripts log none).
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.base import Cost, Method, StepContext, StepOutput, bernoulli_noise
from aaer.methods.noise import check_nonnegative, check_positive

ATTACK_TERMS = {"odd": "the term in the attack on odd batches of the epoch, as the "
                       "CIFAR-10 and ImageNet-100 code",
                "all": "on every batch, as GAT's MNIST code"}
ANCHOR_MODES = ("train", "eval")


def check_attack_term(value) -> str:
    if value not in ATTACK_TERMS:
        raise UsageError(f"invalid attack_term {value!r}; valid: "
                         + "; ".join(f"{k} ({v})" for k, v in ATTACK_TERMS.items()))
    return value


class CleanAnchored(Method):
    """Base of GAT and NuAT: subclasses give ``distance`` and ``weight``."""

    anchor_mode = "train"       # mode of the clean forward the attack is anchored on
    prefix = ""                 # of the statistics' names

    def __init__(self, eps, alpha=1.0, noise_scale=0.5, attack_term="odd", norm="linf"):
        super().__init__(eps, norm)
        if norm != "linf":
            raise UsageError(f"{self.name} has no L2 version: its start is a vertex of the "
                             f"L-inf cube (Bernoulli noise) and its step a sign step, and no "
                             f"L2 setting is published; use --norm linf (got {norm!r})")
        self.alpha = check_positive(f"alpha ({self.name} step as a multiple of eps)", alpha)
        self.noise_scale = check_nonnegative(
            f"noise_scale ({self.name} Bernoulli start as a multiple of eps)", noise_scale)
        self.attack_term = check_attack_term(attack_term)

    # -- what a subclass defines ---------------------------------------------------------
    def distance(self, zc, z, batch_sum=None):
        """D(zc, z) of the batch (the global batch's under data parallelism)."""
        raise NotImplementedError

    def weight(self, epoch: int, total_epochs: int) -> float:
        """lambda_e of epoch ``epoch`` (0-based) of ``total_epochs``."""
        raise NotImplementedError

    # -- the step -------------------------------------------------------------------------
    def attack_uses_term(self, iteration: int) -> bool:
        return self.attack_term == "all" or iteration % 2 == 1

    def cost(self) -> Cost:
        # zc (no grad); z0 + input backward; z1 and zc2 forward, backward through both
        return Cost(forward=4, backward=3)

    def attack(self, model, x, y, lam: float, guided: bool, batch_sum=None):
        """x_adv (detached) and the attack's start x0. Leaves the model in train mode."""
        eps = self.eps
        model.train(self.anchor_mode == "train")
        try:
            with torch.no_grad():
                zc = model(x).float()
            x0 = (x + bernoulli_noise(x, self.noise_scale * eps)).clamp(0.0, 1.0)
            model.eval()
            x0 = x0.detach().requires_grad_(True)
            z0 = model(x0).float()
            objective = self.ce(z0, y, "sum")
            if guided and lam != 0:
                objective = objective + lam * y.shape[0] * self.distance(zc, z0, batch_sum)
            (g,) = torch.autograd.grad(objective, x0)
        finally:
            model.train()
        x0 = x0.detach()
        x1 = (x0 + self.alpha * eps * g.sign()).clamp(0.0, 1.0)
        x_adv = (x + (x1 - x).clamp(-eps, eps)).clamp(0.0, 1.0)
        return x_adv, x0

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        lam = self.weight(ctx.epoch, ctx.total_epochs)
        guided = self.attack_uses_term(ctx.iteration)
        x_adv, _ = self.attack(model, x, y, lam, guided, ctx.batch_sum)
        z1 = model(x_adv)
        zc = model(x)
        ce = self.ce(zc.float(), y)
        d = self.distance(zc.float(), z1.float(), ctx.batch_sum)
        B = y.shape[0]
        stats = {f"{self.prefix}_distance_sum": d.detach() * B,
                 f"{self.prefix}_lambda_sum": x.new_full((), lam * B, dtype=torch.float32),
                 f"{self.prefix}_guided_sum": x.new_full((), float(guided) * B,
                                                         dtype=torch.float32),
                 f"{self.prefix}_clean_ce_sum": ce.detach() * B}
        return StepOutput(loss=ce + lam * d, logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        if not n:
            return {}
        p = self.prefix
        return {f"{p}_{k}": sums.get(f"{p}_{k}_sum", 0.0) / n
                for k in ("distance", "lambda", "guided", "clean_ce")}
