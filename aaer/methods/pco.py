"""FGSM-PCO (Wang, Wang, Tian, Jin, ECCV 2024, arXiv 2407.12443): "Preventing Catastrophic
Overfitting in Fast Adversarial Training: A Bi-level Optimization Perspective".

What it is (official code: HandingWangXDGroup/FGSM-PCO ``FGSM-PCO.py`` lines 164-209 at
1424ba3; docs/methods/fgsm-pco.md). Each example keeps a prior perturbation eta (initialised
once to +-min(alpha, eps) random signs, never reset, keyed by training-set index). Per batch:

    z0 = f(x + eta)                              (not clipped to the box)
    p  = softmax(z0)_y,   c = clamp(1 - p, 0, 1)  (c keeps its graph into forward 1)
    g  = grad_eta LS(z0, t)
    delta = clamp_box(clamp(eta + alpha sign(g), -eps, eps))     (also the next prior)
    x_new = c (x + eta) + (1 - c) (x + beta delta)               (beta = 1.5; not clipped)
    z_new = f(x_new),   z_f = f(x + delta)
    loss = LS(z_new, t) + lamda |MSE(z_f, z0) - MSE(z_f, z_new)|

t: factor-smoothed labels (aaer.methods.prior), MSE the mean over batch and classes; all of
z0, z_new, z_f carry gradient, and so does c (the mixing weight is a function of the
weights through forward 1).

Why it works (the paper's argument): the prior-guided start keeps the attack strong; the
mixing puts the weight p on the amplified fresh FGSM point when the model is confident on
the prior point (the prior has become weak) and keeps the prior point when it is not;
the regulariser balances the distances of the FGSM point's logits to the prior point's and
to the mixed point's, which the authors show keeps the inner maximisation from collapsing
(catastrophic overfitting).

How the official code differs from the paper (per a third-party summary; the paper text is
not in the stored sources): amplification 1.5 in the code (the summary says 2); the
weight on the prior point is 1 - p(x + eta) (the summary reads p itself); the regulariser
uses MSE of logits and an absolute value of the difference; label smoothing with factor 0.6
in both losses. The official training loss hard-codes factor 0.6 while ``--factor``
changes only the attack's targets; here ``factor`` sets both (equal at the default).

Recipe. Official (CIFAR-10 only; the script hard-codes 10 classes): eps 8/255, alpha 8/255
(1.0 eps), beta 1.5, lamda 10, factor 0.6, 110 epochs with lr 0.1 x0.1 at 100/110 and
105/110 of the iterations, batch 128, wd 5e-4. The defaults here; the FastAT Benchmark
(``configs/*/fgsm_pco.yaml``) uses the same values on CIFAR-10/100 and Tiny-ImageNet. aaer's
multistep schedule cannot place its milestones there, so ``train_overrides`` is empty.

Cost: 3 forwards (prior, mixed, FGSM point); 4 backward passes (the input gradient of
forward 1, input-only with its graph kept, then the final backward through all three).
Memory: one image-sized tensor per training example (614 MB for CIFAR-10).

Strengthening (``--on-co rollback``): lamda x 2 first (the always-on regulariser that ties
the three points' logits); alpha x 0.75 (a smaller delta, so a smaller amplified point)
stays available. The amplification beta is not a knob for it (raising it enlarges the
perturbation).

L2: not defined (sign step, cube projection, amplification of an L-inf step); refused.
"""
from __future__ import annotations

import torch

from aaer.methods.base import Cost, Method, StepContext, StepOutput
from aaer.methods.noise import check_nonnegative, check_positive
from aaer.methods.pgi import aae_stats, check_factor, refuse_l2
from aaer.methods.prior import (check_init, factor_targets, logit_mse, prior_slots,
                                read_prior, sign_step, smoothed_ce, true_class_probability,
                                write_prior)


def mixed_point(x, eta, delta, c, beta: float):
    """c (x + eta) + (1 - c) (x + beta delta), c of shape [B] broadcast over the pixels."""
    c = c.view(-1, *([1] * (x.dim() - 1)))
    return c * (x + eta) + (1 - c) * (x + beta * delta)


def pco_regularizer(z_f, z0, z_new):
    """|MSE(z_f, z0) - MSE(z_f, z_new)| (all three live)."""
    return (logit_mse(z_f, z0) - logit_mse(z_f, z_new)).abs()


class FGSMPCO(Method):
    name = "fgsm-pco"
    description = ("FGSM from a per-example prior; trains on the prior/amplified-FGSM mix "
                   "weighted by the true-class probability + lamda * |MSE gap|")
    source = "Wang et al., ECCV 2024 (HandingWangXDGroup/FGSM-PCO, FGSM-PCO.py)"
    single_step = True
    strengthen_by = {"regularizer": "lamda", "step": "alpha"}
    log_columns = (("Ab NUM", "aae_count", "%d"), ("PCO reg", "pco_reg", "%.4f"))
    own_label_smoothing = "factor"      # its factor targets: --label-smoothing is refused

    def __init__(self, eps, alpha=1.0, beta=1.5, lamda=10.0, factor=0.6, delta_init="random",
                 norm="linf"):
        super().__init__(eps, norm)
        refuse_l2("FGSM-PCO", norm, "sign step, cube projection and an amplified L-inf step")
        self.alpha = check_positive("alpha (step as a multiple of eps)", alpha)
        self.beta = check_positive("beta (amplification of the FGSM perturbation)", beta)
        self.lamda = check_nonnegative("lamda (weight of the PCO regulariser)", lamda)
        self.factor = check_factor(factor)
        self.delta_init = check_init(delta_init)

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "beta": self.beta,
                "lamda": self.lamda, "factor": self.factor, "delta_init": self.delta_init,
                "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=3, backward=4)

    def memory_spec(self, example_shape):
        return prior_slots(example_shape)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        eps, step = self.eps, self.alpha * self.eps
        eta, _, _ = read_prior(ctx, x, eps, step, None,     # initialised once, never reset
                               init=self.delta_init)
        eta.requires_grad_(True)
        z0 = model(x + eta)
        t = factor_targets(y, z0.shape[1], self.factor)
        l0 = smoothed_ce(z0, t)
        p = true_class_probability(z0, y)
        c = (1 - p).clamp(0.0, 1.0)                         # live: a function of forward 1
        (g,) = torch.autograd.grad(l0, eta, retain_graph=True)
        eta = eta.detach()
        delta = sign_step(eta, g, x, eps, step)
        write_prior(ctx, delta)
        x_new = mixed_point(x, eta, delta, c, self.beta)
        z_new = model(x_new)
        z_f = model(x + delta)
        reg = pco_regularizer(z_f, z0, z_new)
        loss = smoothed_ce(z_new, t) + self.lamda * reg
        stats = aae_stats(z0, z_f, y, self.aae_num_classes)
        stats["pco_reg_sum"] = reg.detach() * y.shape[0]
        stats["pco_confidence_sum"] = p.detach().sum()
        return StepOutput(loss=loss, logits=z_new.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["pco_reg"] = sums.get("pco_reg_sum", 0.0) / n if n else 0.0
        out["pco_confidence"] = sums.get("pco_confidence_sum", 0.0) / n if n else 0.0
        return out
