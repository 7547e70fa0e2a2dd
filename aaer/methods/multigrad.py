"""MultiGrad (Golgooni et al., arXiv:2103.15476): FGSM along the input-gradient coordinates
whose sign is the same at several random points of the eps-ball.

    g_s = grad_x CE(x + eta_s),  eta_s ~ U(-eps, eps) clipped to [0, 1],  s = 1..S (S = 3)
    c = sum_s sign(g_s);  keep coordinate i when |c_i| >= 2 * agree - S  (agree = S: all agree)
    delta = Proj_eps(0 + alpha * sign(c) * keep),  alpha = 2 eps  ->  eps * sign(c) on kept
    coordinates, 0 elsewhere;  x_adv = clip_[0,1](x + delta)

As in the authors' code the step starts from delta = 0 (not from a noise point) with
alpha = 2 eps, then projection. The S gradients come from ONE forward/backward pass on the
3B-example batch of noisy copies (``batched=True``, the authors' ``--multi-parallel``).
With BatchNorm in train mode this pass normalises with statistics of all 3B examples and
updates the running statistics once, where S separate passes (``batched=False``, the
authors' default when that flag is not given) would use per-copy statistics and update
them S times; in eval mode the two give the same gradients.

Not logged as a single-step attack (no AAE statistics): the attack has no forward pass
at its start point x, and adding one would cost a pass and move BatchNorm statistics.
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.base import (Cost, StepContext, StepOutput, clip_to_box,
                               forward_with_input_grad, uniform_noise)
from aaer.methods.fgsm import SingleStepAttack
from aaer.methods.noise import check_count


def sign_agreement(grads, agree: int):
    """grads: [S, B, ...] input gradients. Returns (direction, keep) where direction is
    sign(sum_s sign(g_s)) on coordinates where at least ``agree`` of the S signs agree
    (a zero gradient counts as agreeing with no one), 0 elsewhere; keep is the mask."""
    S = grads.shape[0]
    c = grads.sign().sum(0)
    keep = c.abs() >= (2 * agree - S)        # >= 1 since agree > S/2, so c != 0 there
    return c.sign() * keep, keep


class MultiGrad(SingleStepAttack):
    name = "multigrad"
    description = "FGSM along coordinates whose gradient sign agrees at 3 random points"
    source = "Golgooni et al., arXiv:2103.15476 (MultiGrad)"
    single_step = False
    presets = {"eps8": {"samples": 3}, "eps16": {"samples": 3}}

    def __init__(self, eps, samples=3, agree=None, alpha=2.0, batched=True,
                 warmup_epochs=0.0, norm="linf"):
        super().__init__(eps, alpha, "zero", 1, warmup_epochs, norm)
        if norm == "l2":
            raise UsageError(f"{self.name} works on the signs of the input gradient's "
                             "coordinates (an L-inf construction); it has no L2 form: use "
                             "--norm linf, or an L2 method (fgsm, rs-fgsm, n-fgsm, rs-aaer, "
                             "n-aaer, gradalign, elle, elle-a, pgd, free)")
        self.samples = check_count("samples (random points)", samples, minimum=1)
        agree = self.samples if agree is None else agree
        if isinstance(agree, bool) or not isinstance(agree, (int, float)) \
                or agree != int(agree) or not (self.samples / 2 < agree <= self.samples):
            raise UsageError(f"agree (signs that must agree) must be an integer in "
                             f"({self.samples / 2:g}, {self.samples}] for samples="
                             f"{self.samples}, got {agree!r}")
        self.agree = int(agree)
        if batched not in (True, False, 0, 1):
            raise UsageError(f"batched must be true (one pass on S*B examples) or false "
                             f"(S separate passes), got {batched!r}")
        self.batched = bool(batched)

    def hparams(self):
        return {"eps": self.eps, "samples": self.samples, "agree": self.agree,
                "alpha": self.alpha, "batched": self.batched,
                "warmup_epochs": self.warmup_epochs, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=self.samples + 1, backward=self.samples + 1)

    def sample_gradients(self, model, x, y):
        """[S, B, ...] input gradients at S uniform points of the eps-ball (box-clipped)."""
        S = self.samples
        if self.batched:
            xs = x.repeat(S, *([1] * (x.dim() - 1)))
            xs = xs + clip_to_box(xs, uniform_noise(xs, self.eps))
            _, _, g = forward_with_input_grad(model, xs, y.repeat(S), self.smoothing)
            return g.view(S, *x.shape)
        grads = []
        for _ in range(S):
            eta = clip_to_box(x, uniform_noise(x, self.eps))
            _, _, g = forward_with_input_grad(model, x + eta, y, self.smoothing)
            grads.append(g)
        return torch.stack(grads)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        eps, w = self.eps, self.warmup(ctx)
        direction, keep = sign_agreement(self.sample_gradients(model, x, y), self.agree)
        delta = (self.alpha * eps * w * direction).clamp(-eps * w, eps * w)
        z1 = model((x + delta).clamp(0.0, 1.0))
        l1 = self.ce(z1.float(), y, "none")
        stats = {"multigrad_kept_sum": keep.flatten(1).float().mean(1).sum()}
        return StepOutput(loss=l1.mean(), logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["multigrad_kept"] = sums.get("multigrad_kept_sum", 0.0) / n if n else 0.0
        return out
