"""FGSM-PGI (Jia et al., ECCV 2022): prior-guided initialisation; the official FGSM-MEP.

What it is. Each example's FGSM attack starts from a perturbation remembered for that
example (the prior eta), not from noise, and the training loss ties the adversarial
logits to those of the prior point:

    z0 = f(x + eta)                          (not clipped to the image box)
    g  = grad_eta LS(z0, t)
    m  <- g / ||g||_1 + mu m                 (||.||_1 over the whole batch)
    delta    = clamp_box(clamp(eta + alpha sign(g), -eps, eps))    training perturbation
    eta_next = clamp_box(clamp(eta + alpha sign(m), -eps, eps))    stored prior
    loss = LS(f(x + delta), t) + lamda MSE(f(x + delta), z0)

with t the "factor"-smoothed labels (factor on the true class, (1 - factor)/(C - 1) on the
others; aaer.methods.prior), LS their cross-entropy, MSE the mean over batch and classes.
z0 is NOT detached: the regulariser's gradient flows through both forward passes.
eta and m are per example (keyed by the training-set index: the official code permutes
data and buffers together, so this is exact under any order) and are reset every
``epochs_reset`` epochs (0-based epochs 0, 40, 80 at 40) to +-min(alpha, eps) random signs
and zero (``delta_init="zero"``: to zero, the official ``--delta-init zero``).

Why it works (the paper's argument). A prior carried from earlier epochs is a stronger
start than random noise, so one FGSM step from it makes a stronger attack, and the
regulariser (the adversarial logits stay close to the prior point's) keeps the loss
surface smooth around it; together they prevent catastrophic overfitting at eps 8/255
(the authors' ablation: FGSM-RS "with regularizer" keeps its best PGD accuracy to the
last epoch, without it the last epoch falls to 0.02).

How the official code differs from the paper/poster (jiaxiaojunQAQ/FGSM-PGI ``FGSM_MEP.py``
at fc15cfe; docs/methods/fgsm-pgi.md has the line numbers):
- only FGSM-MEP (the prior from the momentum of all previous epochs) is implemented;
  FGSM-EP (the last perturbation as prior) is the special case ``momentum_decay=0``: then
  sign(m) = sign(g) and eta_next = delta exactly; FGSM-BP has no code and is not here;
- the momentum accumulates the L1-normalised raw gradient (batch-wide norm), the poster
  sign vectors;
- the buffers are reset every ``epochs_reset`` epochs (not in the poster);
- label smoothing by ``factor`` in both losses; MSE = the poster's squared norm / C;
- forward 1 uses x + eta unclipped (the prior was clipped against another crop of the
  image, or not at all right after a reset).

Recipe. Official: eps 8/255, alpha 8/255 (1.0 eps), lamda 10, mu 0.3, factor 0.6,
epochs_reset 40 (CIFAR-10, ``FGSM_MEP.py``) or 10 (CIFAR-100, Tiny-ImageNet:
``FGSM_MEP_cifar100.py``, ``FGSM_MEP_TinyImageNet.py``): ``published``. Training: 110
epochs, SGD lr 0.1 x0.1 at 100/110 and 105/110 of the iterations, batch 128, wd 5e-4.
aaer's multistep schedule has its milestones at 1/2 and 3/4 of training, so that schedule
cannot be requested here and ``train_overrides`` is left empty (a lr 0.1 or 110 epochs on
their own would not be the authors' recipe either); run it with --epochs and --lr-max as
you choose. The FastAT Benchmark (fzjcdt/FastAT_Benchmark ``fast_at/fgsm_pgi.py``,
``configs/*/fgsm_pgi.yaml``) uses the same lamda, mu and epochs_reset 40 on all data sets
but clips forward 1 to the box and uses torch's label_smoothing 0.4.

Cost: 2 forwards; 3 backward passes (the input gradient of forward 1, taken input-only
with its graph kept, and the final backward through both forwards). Memory: two
image-sized tensors per training example (prior and momentum; 1.2 GB for CIFAR-10).

Strengthening (``--on-co rollback``): lamda x 2 first. The regulariser is the part the
authors show prevents CO, and it acts on every batch; alpha x 0.75 (smaller training step
and prior step) stays available.

L2: not defined (sign-momentum prior and cube projection); refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods.base import Cost, Method, StepContext, StepOutput, aae_statistics
from aaer.methods.noise import check_count, check_nonnegative, check_positive
from aaer.methods.prior import (check_init, factor_targets, l1_normalised, logit_mse,
                                prior_slots, read_prior, sign_step, smoothed_ce, write_prior)

# epochs_reset of the official scripts, per data set (all at eps 8/255)
EPOCHS_RESET = {"cifar10": (40, "FGSM_MEP.py"), "cifar100": (10, "FGSM_MEP_cifar100.py"),
                "tinyimagenet": (10, "FGSM_MEP_TinyImageNet.py")}


def check_factor(factor) -> float:
    from aaer.checks import number
    return number("factor (label smoothing: weight of the true class)", factor, low=0,
                  high=1, low_open=True)


def refuse_l2(name: str, norm: str, why: str) -> None:
    if norm == "l2":
        raise UsageError(f"--norm l2: {name} is defined for L-inf only ({why}); use --norm "
                         "linf, or an L2 method (fgsm, rs-fgsm, n-fgsm, rs-aaer, n-aaer, "
                         "gradalign, elle, elle-a, pgd, free)")


def mep_attack(model, x, y, ctx: StepContext, eps: float, step: float, mu: float,
               every: int, factor: float, keep_graph: bool, init: str = "random"):
    """The FGSM-MEP attack of one batch, its prior and momentum written back.

    Returns (z0, l0, delta, t): z0 = f(x + eta) with its graph (kept for a later backward
    when ``keep_graph``), l0 = LS(z0, t), delta the (constant) training perturbation, t the
    factor-smoothed targets."""
    eta, m, _ = read_prior(ctx, x, eps, step, every, momentum=True, init=init)
    eta.requires_grad_(True)
    z0 = model(x + eta)
    t = factor_targets(y, z0.shape[1], factor)
    l0 = smoothed_ce(z0, t)
    (g,) = torch.autograd.grad(l0, eta, retain_graph=keep_graph)
    eta = eta.detach()
    m = l1_normalised(g, ctx.batch_sum) + mu * m
    eta_next = sign_step(eta, m, x, eps, step)
    delta = sign_step(eta, g, x, eps, step)
    write_prior(ctx, eta_next, m)
    return z0, l0, delta, t


def aae_stats(z0, z1, y, num_classes):
    """AAE statistics with plain per-example CE at the start (prior) and attack points."""
    with torch.no_grad():
        l0 = F.cross_entropy(z0.detach().float(), y, reduction="none")
        l1 = F.cross_entropy(z1.detach().float(), y, reduction="none")
    return aae_statistics(z0.detach(), z1.detach(), l0, l1, y, num_classes)


class FGSMPGI(Method):
    name = "fgsm-pgi"
    description = ("FGSM from a per-example momentum prior (reset every 40 epochs) + "
                   "lamda * MSE(adversarial logits, prior logits), factor label smoothing")
    source = "Jia et al., ECCV 2022 (jiaxiaojunQAQ/FGSM-PGI, FGSM_MEP.py)"
    single_step = True
    strengthen_by = {"regularizer": "lamda", "step": "alpha"}
    log_columns = (("Ab NUM", "aae_count", "%d"), ("PGI reg", "pgi_reg", "%.4f"))
    own_label_smoothing = "factor"      # its factor targets: --label-smoothing is refused

    def __init__(self, eps, alpha=1.0, lamda=10.0, momentum_decay=0.3, epochs_reset=40,
                 factor=0.6, delta_init="random", norm="linf"):
        super().__init__(eps, norm)
        refuse_l2("FGSM-PGI", norm, "its prior is a sign-momentum step projected to the cube")
        self.alpha = check_positive("alpha (step as a multiple of eps)", alpha)
        self.lamda = check_nonnegative("lamda (weight of MSE(z_adv, z_prior))", lamda)
        self.momentum_decay = check_nonnegative("momentum_decay (mu of the prior's momentum)",
                                                momentum_decay)
        self.epochs_reset = check_count("epochs_reset (epochs between prior resets)",
                                        epochs_reset, minimum=1)
        self.factor = check_factor(factor)
        self.delta_init = check_init(delta_init)

    @classmethod
    def published(cls, dataset: str, epsilon: float, norm: str = "linf"):
        """epochs_reset of the official script of the data set (eps 8/255 only)."""
        ds = dataset if dataset in EPOCHS_RESET else "cifar10"
        every, script = EPOCHS_RESET[ds]
        exact = ds == dataset and abs(epsilon - 8) < 1e-9
        source = (f"published {dataset} eps 8 ({script})" if exact else
                  f"nearest published: {ds} eps 8 ({script}; none for {dataset} eps "
                  f"{epsilon:.4g})")
        return {"epochs_reset": every}, source

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "lamda": self.lamda,
                "momentum_decay": self.momentum_decay, "epochs_reset": self.epochs_reset,
                "factor": self.factor, "delta_init": self.delta_init, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2, backward=3)

    def memory_spec(self, example_shape):
        return prior_slots(example_shape, momentum=True)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, _, delta, t = mep_attack(model, x, y, ctx, self.eps, self.alpha * self.eps,
                                     self.momentum_decay, self.epochs_reset, self.factor,
                                     keep_graph=True, init=self.delta_init)
        z1 = model(x + delta)
        reg = logit_mse(z1, z0)                 # z0 live: gradient through both forwards
        loss = smoothed_ce(z1, t) + self.lamda * reg
        stats = aae_stats(z0, z1, y, self.aae_num_classes)
        stats["pgi_reg_sum"] = reg.detach() * y.shape[0]
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["pgi_reg"] = sums.get("pgi_reg_sum", 0.0) / n if n else 0.0
        return out
