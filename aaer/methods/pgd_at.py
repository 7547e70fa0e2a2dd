"""PGD-AT (Madry et al. 2018): the multi-step reference the fast methods are measured against.

    delta_0 ~ U(-eps, eps), clipped so that x + delta_0 is in [0, 1]
    delta_{k+1} = clip_box(Proj_eps(delta_k + step * sign(grad_x CE(x + delta_k))))
    loss = mean CE(x + delta_K)

Every example is moved at every step (no early stop on misclassified examples), and the
model stays in train mode during the attack (``attack_mode="train"``), as in the
fast-AT lineage's PGD-AT scripts (Wong et al., Rice et al.): BatchNorm uses and updates
batch statistics at each of the K attack passes. ``attack_mode="eval"`` attacks the
eval-mode model instead and returns to train mode for the training forward.

The step is ``alpha`` * eps (default eps/4) or, when ``step255`` is given, step255/255
(the common fixed step 2/255: preset "pgd10").
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput, clip_to_box,
                               ball_noise, forward_with_input_grad, project, unit_step)
from aaer.methods.noise import check_count, check_positive

ATTACK_MODES = ("train", "eval")
DELTA_INITS = ("random", "zero")


def pgd_perturbation(model, x, y, eps: float, step: float, steps: int,
                     random_start: bool = True, norm: str = "linf", smoothing: float = 0.0):
    """K-step PGD on mean CE (label-smoothed by ``smoothing``) in the ``norm`` ball, every
    example moved every step.

    Returns (delta, losses): losses[k] is the per-example CE at delta_k, k = 0..K-1
    (from the attack's own forward passes, detached).
    """
    delta = clip_to_box(x, ball_noise(x, eps, norm)) if random_start else torch.zeros_like(x)
    losses = []
    for _ in range(steps):
        _, l, g = forward_with_input_grad(model, x + delta, y, smoothing)
        losses.append(l)
        delta = clip_to_box(x, project(delta + step * unit_step(g, norm), eps, norm))
    return delta.detach(), losses


class PGDAT(Method):
    name = "pgd"
    description = "PGD-AT: K-step PGD (random start, step eps/4), the multi-step reference"
    source = "Madry et al., ICLR 2018; Rice et al. 2020"
    presets = {"eps8": {"steps": 10, "alpha": 0.25}, "eps16": {"steps": 10, "alpha": 0.25},
               "pgd10": {"steps": 10, "step255": 2.0}}
    strengthen_by = {"step": "alpha"}

    def __init__(self, eps, steps=10, alpha=0.25, step255=None, delta_init="random",
                 attack_mode="train", norm="linf"):
        super().__init__(eps, norm)
        self.steps = check_count("steps (PGD iterations)", steps, minimum=1)
        self.alpha = check_positive("alpha (PGD step as a multiple of eps)", alpha)
        self.step255 = None if step255 is None else check_positive(
            "step255 (PGD step in 1/255 units)", step255)
        if delta_init not in DELTA_INITS:
            raise UsageError(f"delta_init must be one of {DELTA_INITS}, got {delta_init!r}")
        if attack_mode not in ATTACK_MODES:
            raise UsageError(f"attack_mode must be one of {ATTACK_MODES} (model mode "
                             f"during the attack), got {attack_mode!r}")
        self.delta_init = delta_init
        self.attack_mode = attack_mode

    @property
    def step_size(self) -> float:
        return self.step255 / 255 if self.step255 is not None else self.alpha * self.eps

    def strengthen_target(self, change: str = "auto") -> tuple[str, str]:
        """A rollback shrinks the step in use: alpha, or the fixed step255 when it is set
        (alpha is then ignored by the attack)."""
        change, attr = super().strengthen_target(change)
        if attr == "alpha" and self.step255 is not None:
            attr = "step255"
        return change, attr

    def hparams(self):
        return {"eps": self.eps, "steps": self.steps, "alpha": self.alpha,
                "step255": self.step255, "delta_init": self.delta_init,
                "attack_mode": self.attack_mode, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=self.steps + 1, backward=self.steps + 1)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        was_training = model.training
        if self.attack_mode == "eval":
            model.eval()
        try:
            delta, losses = pgd_perturbation(model, x, y, self.eps, self.step_size,
                                             self.steps, self.delta_init == "random",
                                             self.norm, self.smoothing)
        finally:
            model.train(was_training)
        z = model((x + delta).clamp(0.0, 1.0))
        l = self.ce(z.float(), y, "none")
        stats = {"pgd_start_loss_sum": losses[0].sum()}
        return StepOutput(loss=l.mean(), logits=z.detach(), stats=stats)

    def summarize(self, sums, n):
        return {"pgd_start_loss": sums.get("pgd_start_loss_sum", 0.0) / n if n else 0.0}
