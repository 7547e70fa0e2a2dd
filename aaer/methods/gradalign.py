"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020): FGSM-AT + gradient alignment.

    loss = mean CE(x_adv) + lamda * mean_i (1 - cos(g1_i, g2_i))
    g1 = grad_x CE at the attack's start point (x itself with the default zero start)
    g2 = grad_x CE at x + U(-eps, eps), computed with create_graph=True

As in the authors' code:
- g1 is the FGSM gradient itself, taken as a constant; only g2 carries gradient to the
  weights (double backprop through the input gradient);
- the random point x + U(-eps, eps) is not clipped to [0, 1];
- examples whose g1 or g2 is exactly zero are left out of the mean cosine;
- FGSM with zero start; the published runs use step 1.25 eps projected to the eps-ball,
  which from a zero start is a step of exactly eps, hence alpha = 1.0 here.
- lamda = 0.2 at eps 8/255 and 2.0 at eps 16/255; the published scripts use
  lamda = 0.2 * 10**((eps255 - 8) / 8) for eps255 in 1..16 (0.027 at 1, 0.632 at 12),
  i.e. log-linear in eps itself; above 16 the value 2.0 is kept (as the ELLE authors'
  GradAlign runs at 18..26/255 do). ``published_lamda`` gives it.
- peak learning rate 0.3 instead of 0.2: ``train_overrides``.
"""
from __future__ import annotations

import torch

from aaer.methods.base import Cost, StepContext, StepOutput, aae_statistics, ball_noise
from aaer.methods.regularised import RegularisedFGSM


def published_lamda(eps255: float) -> float:
    """GradAlign's lamda of the published CIFAR-10 scripts at eps = eps255/255."""
    return 0.2 * 10 ** ((min(eps255, 16.0) - 8.0) / 8.0)


def gradient_cosine(g1, g2):
    """Per-example cosine of two input gradients, and which examples have both nonzero.

    Returns (cos, valid): cos is 0 where not valid (no NaN, also in double backprop).
    """
    a, b = g1.flatten(1), g2.flatten(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    valid = (na > 0) & (nb > 0)
    denom = torch.where(valid, na * nb, torch.ones_like(na))
    cos = torch.where(valid, (a * b).sum(1) / denom, torch.zeros_like(na))
    return cos, valid


def gradalign_penalty(g1, g2):
    """mean over examples with nonzero gradients of 1 - cos(g1_i, g2_i): 0 aligned, 2 opposite."""
    cos, valid = gradient_cosine(g1, g2)
    v = valid.to(cos.dtype)
    return ((1 - cos) * v).sum() / v.sum().clamp(min=1.0)


class GradAlign(RegularisedFGSM):
    name = "gradalign"
    description = "FGSM + lamda * (1 - cos(grad at x, grad at x + U(-eps,eps)))"
    source = "Andriushchenko & Flammarion, NeurIPS 2020"
    presets = {"eps8": {"lamda": 0.2}, "eps16": {"lamda": 2.0}}
    # the preset's training change: the published runs use a peak learning rate of 0.3
    train_overrides = {"lr_max": 0.3}
    # a rollback after CO raises the alignment weight first
    strengthen_by = {"regularizer": "lamda", "step": "alpha"}

    weight_name = "GradAlign weight"
    published_lamda = staticmethod(published_lamda)

    def cost(self) -> Cost:
        if self.lamda == 0:
            return Cost(forward=2, backward=2)
        return Cost(forward=3, backward=3, double_backprop=True)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, l0, z1, l1, g1 = self.attack(model, x, y, ctx)
        stats = aae_statistics(z0, z1.detach(), l0, l1.detach())
        loss = l1.mean()
        if self.lamda > 0:
            x2 = (x + ball_noise(x, self.eps, self.norm)).requires_grad_(True)
            l2 = self.ce(model(x2).float(), y)
            (g2,) = torch.autograd.grad(l2, x2, create_graph=True)
            cos, valid = gradient_cosine(g1, g2)
            v = valid.float()
            loss = loss + self.lamda * ((1 - cos) * v).sum() / v.sum().clamp(min=1.0)
            stats["gradalign_cos_sum"] = (cos.detach() * v).sum()
            stats["gradalign_valid"] = v.sum()
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        if "gradalign_valid" in sums:
            m = sums["gradalign_valid"]
            out["gradalign_cos"] = sums["gradalign_cos_sum"] / m if m else 0.0
        return out
