"""ZeroGrad (Golgooni et al., arXiv:2103.15476): RS-FGSM ignoring small gradient entries.

    eta ~ U(-eps, eps), clipped to [0, 1];  g = grad_x CE(x + eta)
    g_i <- 0 where |g_i| < q-quantile of |g| over the example's own entries
    delta = Proj_eps(eta + alpha * sign(g)),  alpha = 2 eps;  x_adv = clip_[0,1](x + delta)

A zeroed entry keeps its start value eta_i (sign(0) = 0). q = 0.35 for CIFAR-10 and
0.45 for CIFAR-100 (the authors' README; their code: one iteration, random start). The
quantile interpolates linearly between order statistics, as torch.quantile does; it is
computed by sorting, so it also works for inputs larger than torch.quantile accepts.
"""
from __future__ import annotations

from aaer.errors import UsageError
from aaer.methods.base import Cost, StepContext, StepOutput, aae_statistics
from aaer.methods.fgsm import SingleStepAttack
from aaer.methods.noise import noise_settings


def per_example_quantile(a, q: float):
    """The q-quantile of each row of a [B, ...] tensor (linear interpolation)."""
    v = a.flatten(1).sort(dim=1).values
    pos = q * (v.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, v.shape[1] - 1)
    return v[:, lo] + (v[:, hi] - v[:, lo]) * (pos - lo)


def zero_small_gradients(grad, q: float):
    """Zero the entries of each example's gradient whose |value| is below its q-quantile.

    Returns (zeroed gradient, mask of the zeroed entries).
    """
    mag = grad.abs()
    thresh = per_example_quantile(mag, q).view(-1, *([1] * (grad.dim() - 1)))
    zeroed = mag < thresh
    return grad.masked_fill(zeroed, 0.0), zeroed


class ZeroGrad(SingleStepAttack):
    name = "zerograd"
    description = "RS-FGSM, step 2 eps, input-gradient entries below the q-quantile zeroed"
    source = "Golgooni et al., arXiv:2103.15476 (ZeroGrad)"
    presets = {"eps8": {"q": 0.35}, "eps16": {"q": 0.35},
               "cifar100-eps8": {"q": 0.45}, "cifar100-eps16": {"q": 0.45}}

    def __init__(self, eps, q=0.35, noise="rs", alpha=2.0, warmup_epochs=0.0, norm="linf"):
        delta_init, clamp = noise_settings(noise)
        super().__init__(eps, alpha, delta_init, clamp, warmup_epochs, norm)
        if norm == "l2":
            raise UsageError(f"{self.name} works on the signs of the input gradient's "
                             "coordinates (an L-inf construction); it has no L2 form: use "
                             "--norm linf, or an L2 method (fgsm, rs-fgsm, n-fgsm, rs-aaer, "
                             "n-aaer, gradalign, elle, elle-a, pgd, free)")
        try:
            q = float(q)
        except (TypeError, ValueError):
            raise UsageError(f"q (quantile of |grad| to zero) must be in [0, 1], got {q!r}") \
                from None
        if not (0.0 <= q <= 1.0):
            raise UsageError(f"q (quantile of |grad| to zero) must be in [0, 1], got {q!r}")
        self.q = q
        self.noise = noise

    def hparams(self):
        return {"eps": self.eps, "q": self.q, "noise": self.noise, "alpha": self.alpha,
                "warmup_epochs": self.warmup_epochs, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2, backward=2)

    def step_direction(self, grad):
        grad, self._zeroed = zero_small_gradients(grad, self.q)
        return grad.sign()

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, l0, z1, l1, _ = self.attack(model, x, y, ctx)
        stats = aae_statistics(z0, z1.detach(), l0, l1.detach())
        stats["zerograd_zeroed_sum"] = self._zeroed.flatten(1).float().mean(1).sum()
        return StepOutput(loss=l1.mean(), logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["zerograd_zeroed"] = sums.get("zerograd_zeroed_sum", 0.0) / n if n else 0.0
        return out
