"""Single-step FGSM adversarial training: FGSM (zero start), RS-FGSM and N-FGSM.

The three differ only in the initial perturbation eta, the step alpha and whether the
result is projected back to the eps-ball (SPEC §2 steps 1-4, §6):

    FGSM     eta = 0,               alpha = eps,      projected       (Goodfellow et al.)
    RS-FGSM  eta ~ U(-eps, eps),    alpha = 1.25 eps, projected       (Wong et al. 2020)
    N-FGSM   eta ~ U(-2eps, 2eps),  alpha = eps,      not projected   (de Jorge et al. 2022)

``clamp`` follows the seed script's ``--clamp``: 1 = RS variant (noise radius eps,
projection), 0 = N variant (noise radius 2 eps, no projection).
"""
from __future__ import annotations

import torch

from aaer.checks import number
from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput, aae_statistics,
                               ball_noise, clip_to_box, forward_with_input_grad, project,
                               unit_step, with_defaults)

DELTA_INITS = ("zero", "random")


class SingleStepAttack(Method):
    """x_adv = clip_[0,1](x + Proj(eta + alpha * w * step(grad_x l(x + eta)))).

    L-inf: step = sign, Proj = clip to [-eps, eps], eta uniform in the cube. L2 (SPEC §10):
    step = grad / ||grad||_2 per example, Proj = onto the L2 ball, eta uniform in the L2
    ball (radius eps, RS variant; 2 eps, N variant, which does not project).
    """

    single_step = True
    strengthen_by = {"step": "alpha"}
    # the reference log's AAE count (SPEC §2)
    log_columns = (("Ab NUM", "aae_count", "%d"),)

    def __init__(self, eps: float, alpha: float = 1.25, delta_init: str = "random",
                 clamp: int = 1, warmup_epochs: float = 0.0, norm: str = "linf"):
        super().__init__(eps, norm)
        if delta_init not in DELTA_INITS:
            raise UsageError(f"delta_init must be one of {DELTA_INITS}, got {delta_init!r}")
        clamp = number("clamp (0: N variant, 1: RS variant)", clamp, integer=True, low=0, high=1)
        self.alpha = number("alpha (step as a multiple of eps)", alpha, low=0, low_open=True)
        self.delta_init = delta_init
        self.clamp = int(clamp)
        self.warmup_epochs = number("warmup_epochs", warmup_epochs, low=0)

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "delta_init": self.delta_init,
                "clamp": self.clamp, "warmup_epochs": self.warmup_epochs, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2, backward=2)

    def warmup(self, ctx: StepContext) -> float:
        """SVHN's linear warm-up w = min(progress / warmup_epochs, 1); 1 when off."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(ctx.progress / self.warmup_epochs, 1.0)

    def initial_noise(self, x):
        if self.delta_init == "zero":
            return torch.zeros_like(x)
        radius = self.eps if self.clamp else 2 * self.eps
        return ball_noise(x, radius, self.norm)

    def step_direction(self, grad):
        """The attack's step direction from the input gradient (ZeroGrad overrides it)."""
        return unit_step(grad, self.norm)

    def attack(self, model, x, y, ctx: StepContext):
        """Steps 1-4 of SPEC §2. Returns (z0, l0, z1, l1, grad): z1/l1 carry gradient;
        grad is the (constant) input gradient at the start point x + eta."""
        eps, w = self.eps, self.warmup(ctx)
        eta = clip_to_box(x, self.initial_noise(x))
        z0, l0, grad = forward_with_input_grad(model, x + eta, y, self.smoothing)
        delta = eta + self.alpha * eps * w * self.step_direction(grad)
        if self.clamp:
            delta = project(delta, eps * w, self.norm)
        z1 = model((x + delta).clamp(0.0, 1.0))
        l1 = self.ce(z1.float(), y, "none")
        return z0, l0, z1, l1, grad

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, l0, z1, l1, _ = self.attack(model, x, y, ctx)
        return StepOutput(loss=l1.mean(), logits=z1.detach(),
                          stats=aae_statistics(z0, z1.detach(), l0, l1.detach(), y,
                                                self.aae_num_classes))


class FGSM(SingleStepAttack):
    name = "fgsm"
    description = "FGSM-AT: zero start, step eps, projected"
    source = "Goodfellow et al. 2015; Wong et al. 2020"
    __init__ = with_defaults(SingleStepAttack.__init__, alpha=1.0, delta_init="zero", clamp=1)


class RSFGSM(SingleStepAttack):
    name = "rs-fgsm"
    description = "RS-FGSM: U(-eps,eps) start, step 1.25 eps, projected"
    source = "Wong, Rice, Kolter, ICLR 2020"
    # SingleStepAttack's defaults are RS-FGSM's: alpha 1.25, random start, clamp 1


class NFGSM(SingleStepAttack):
    name = "n-fgsm"
    description = "N-FGSM: U(-2eps,2eps) start, step eps, no projection"
    source = "de Jorge et al., NeurIPS 2022"
    __init__ = with_defaults(SingleStepAttack.__init__, alpha=1.0, delta_init="random", clamp=0)
