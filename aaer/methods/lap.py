"""LAP: Layer-Aware adversarial weight Perturbation (Lin, Yu, Han, Su, Liu, ICML 2024).

Catastrophic overfitting starts in the first layers: they learn "pseudo-robust shortcuts"
that defeat the single-step attack without real robustness. LAP keeps moving the weights
of every layer by a normalised step whose size falls with depth, so that no shortcut
settles in the early layers, and trains on a single-step adversarial example at the moved
weights. V-LAP, R-LAP and N-LAP are the FGSM, RS-FGSM and N-FGSM attacks of fgsm.py with
this weight perturbation (the official script's --delta-init/--clamp/--alpha).

One step, as the official code does it (docs/methods/lap.md; tmllab/2024_ICML_LAP
CIFAR10/LAP.py lines 99-151, utils.py lines 26-46):

    eta  = start noise, x + eta clipped to [0, 1]
    l0   = mean CE(f(x + eta; w))                                     (BN statistics move)
    a real optimiser step from w on l0 (current lr, momentum, weight decay): w -> w'
    delta = eta + alpha * eps * sign(grad_x l0), projected (V/R), clipped to the box
    v_k  = ||w_k|| / (||w'_k - w_k|| + 1e-20) * (w'_k - w_k)   for the K tensors whose
           name has "weight" and that have more than one dimension (convolutions, linear)
    w is put back (the BN statistics of the first forward are kept), and so is the
           optimiser state (see the modes)
    w~_k = w_k + (1 - (ln k / ln L)^gamma) * beta * v_k,  k = 1..K in named_parameters
           order, L = layer_number (default K: the last tensor is not moved)
    loss = mean CE(f(clip(x + delta); w~))                            (BN statistics move)
and the training loop's optimiser step is taken FROM w~: the perturbation is not removed,
it accumulates over the run.

What the code does that the paper's story does not say (docs/methods/lap.md): the
perturbation points along the optimiser's *descent* step at the start point (momentum and
weight decay included), not along an ascent direction as AWP's does; its size is
c_k * beta * ||w_k|| at every iteration whatever the learning rate (the lr cancels), and
exactly zero when the lr is 0 (CyclicLR's first iteration).

Modes (``lap_mode``):
- ``reference`` (default): the official script under the torch it pins (requirements.txt:
  torch 2.0.1), whose ``Optimizer.load_state_dict`` deep-copies the state it is given
  (torch 2.0.1 torch/optim/optimizer.py line 379): the restore puts back the momentum
  buffers as they were, so the first optimiser step leaves no trace but the perturbation.
- ``shared-momentum``: the same script under torch >= 2.1, where ``load_state_dict`` makes
  a shallow copy and keeps the tensors it is given (torch 2.1.0 optimizer.py line 716):
  the proxy optimiser then shares the momentum tensors, the first step's in-place update
  survives the "restore", and the momentum after the step is
  mu (mu b + g1 + lam w) + g2 + lam w~ -- except where a parameter had no momentum buffer
  yet (the very first iteration): the restore drops the buffer the first step created.
  This is what running the official repository with a current torch gives.
- ``restore``: an ablation that is neither the paper's nor the code's: as ``reference``,
  but the perturbation is put back before the optimiser step (AWP/SAM style: the gradient
  at w~ updates w), so nothing accumulates.

Cost: 2 forwards, 2 full backwards (the first one fills the weight gradients the
perturbation needs and the input gradient), plus one extra optimiser step and a copy of
the parameters (and, except in shared-momentum mode, of the momentum buffers) per step.

Recipe: the official README's commands for CIFAR-10 and PreActResNet-18 (beta per variant
and eps 8/12/16/32, gamma 0.3 everywhere); the repository gives no values for CIFAR-100
or Tiny-ImageNet, so other data sets and radii take the CIFAR-10 entry at the nearest eps
(log scale), and the source says so. Training is AAER's recipe, aaer's defaults.

strengthen_by: a rollback after CO doubles beta, LAP's own knob against CO (the README's
table raises it with eps, e.g. V-LAP 0.03 -> 0.07 from eps 8 to 16, so a doubling stays
in the published range; per third-party summaries of the paper, its ablation reports CO
for too small a beta); ``--rollback-change step`` shrinks alpha.

L2: refused. The code (and, per its summaries, the paper) trains L-inf only, and beta was
tuned per L-inf radius.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from aaer.checks import number
from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput, ball_noise,
                               clip_to_box, project, unit_step)

LAP_MODES = ("reference", "shared-momentum", "restore")
DELTA_INITS = ("zero", "random")
NORM_EPS = 1e-20          # utils.py's EPS in the weight direction's scale
GAMMA = 0.3               # every published command

# README lines 33-50: --beta per variant at --epsilon 8/12/16/32, CIFAR-10, PreActResNet-18
BETAS = {
    "v-lap": {8: 0.03, 12: 0.058, 16: 0.07, 32: 0.48},
    "r-lap": {8: 0.002, 12: 0.03, 16: 0.05, 32: 0.3},
    "n-lap": {8: 0.001, 12: 0.002, 16: 0.005, 32: 0.75},
}


def perturbed_weights(named) -> list[tuple[str, torch.Tensor]]:
    """The tensors LAP perturbs, in ``named_parameters`` order: every parameter whose name
    contains "weight" and that has more than one dimension (convolution kernels and
    linear weights; BatchNorm weights and biases are not)."""
    return [(n, p) for n, p in named if "weight" in n and p.dim() > 1]


def layer_coefficients(count: int, layer_number: int, gamma: float) -> list[float]:
    """c_k = 1 - (ln k / ln L)^gamma for k = 1..count, in float64 with numpy's log and
    power, as the official add_into_weights computes them (c_1 = 1, c_L = 0)."""
    return [float(1.0 - np.power(np.log(k) / np.log(layer_number), gamma))
            for k in range(1, count + 1)]


def weight_direction(w_old: torch.Tensor, w_new: torch.Tensor) -> torch.Tensor:
    """(w_new - w_old) rescaled to the norm of w_old (utils.py diff_in_weights)."""
    diff = w_new - w_old
    return w_old.norm() / (diff.norm() + NORM_EPS) * diff


def _at_least_fp32(z: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: autocast's bf16 upcast to fp32, float64 kept (parity tests)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _optimizer_state(opt, deep: bool) -> dict:
    """Each parameter's optimiser state: its tensors cloned (deep, what torch 2.0.1's
    load_state_dict keeps) or the very tensors (shallow, torch >= 2.1)."""
    def keep(v):
        return v.detach().clone() if deep and isinstance(v, torch.Tensor) else v
    return {p: {k: keep(v) for k, v in s.items()} for p, s in opt.state.items()}


def _put_back_state(opt, saved: dict) -> None:
    """What ``opt.load_state_dict`` of the saved state leaves: the saved entries, and no
    state for a parameter that had none."""
    for p in [p for p in opt.state if p not in saved]:
        del opt.state[p]
    for p, s in saved.items():
        opt.state[p] = dict(s)


class LAP(Method):
    """V-LAP (zero start), R-LAP (clamp=1) or N-LAP (clamp=0) with a layer-aware weight
    perturbation of strength beta and depth profile gamma (see the module docstring)."""

    name = "lap"
    description = "single-step AT at layer-aware perturbed weights"
    source = "Lin, Yu, Han, Su, Liu, ICML 2024"
    strengthen_by = {"regularizer": "beta", "step": "alpha"}
    log_columns = (("Start Loss", "lap_start_loss", "%.4f"),)

    def __init__(self, eps, alpha=1.0, delta_init="random", clamp=0, beta=0.001, gamma=GAMMA,
                 layer_number=None, lap_mode="reference", norm="linf"):
        if norm == "l2":
            raise UsageError(f"--method {self.name} --norm l2: LAP has no L2 version in its "
                             "paper or code (beta is tuned per L-inf radius); valid: linf")
        super().__init__(eps, norm)
        if delta_init not in DELTA_INITS:
            raise UsageError(f"invalid delta_init {delta_init!r}; valid: {', '.join(DELTA_INITS)}")
        self.clamp = number("clamp (0: N variant, 1: RS variant)", clamp, integer=True, low=0,
                            high=1)
        self.delta_init = delta_init
        self.alpha = number("alpha (step as a multiple of eps)", alpha, low=0, low_open=True)
        self.beta = number("beta (LAP's weight-perturbation strength)", beta, low=0)
        self.gamma = number("gamma (LAP's depth profile)", gamma, low=0, low_open=True)
        self.layer_number = None if layer_number is None else number(
            "layer_number (LAP's L; default: the model's number of perturbed tensors)",
            layer_number, integer=True, low=2)
        if lap_mode not in LAP_MODES:
            raise UsageError(f"invalid lap_mode {lap_mode!r}; valid: {', '.join(LAP_MODES)}")
        self.lap_mode = lap_mode

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "delta_init": self.delta_init,
                "clamp": self.clamp, "beta": self.beta, "gamma": self.gamma,
                "layer_number": self.layer_number, "lap_mode": self.lap_mode,
                "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2, backward=2)

    @classmethod
    def published(cls, dataset: str, epsilon: float, norm: str = "linf"):
        """beta and gamma of the official README (tmllab/2024_ICML_LAP README.md lines
        33-50) for CIFAR-10 at eps 8/12/16/32; elsewhere
        the CIFAR-10 entry at the nearest eps (log scale), with a source saying so."""
        if norm != "linf" or cls.name not in BETAS:
            return None
        table = BETAS[cls.name]
        nearest = min(table, key=lambda e: abs(math.log(e) - math.log(max(epsilon, 1e-6))))
        exact = dataset == "cifar10" and abs(nearest - epsilon) < 1e-9
        source = (f"published cifar10 eps {nearest:g}" if exact else
                  f"nearest published: cifar10 eps {nearest:g} (none for {dataset} eps "
                  f"{epsilon:.4g})")
        return {"beta": table[nearest], "gamma": GAMMA}, source

    # -- the step ----------------------------------------------------------------------
    def coefficients(self, count: int) -> list[float]:
        """c_k for the model's ``count`` perturbed tensors; L defaults to ``count``."""
        L = count if self.layer_number is None else self.layer_number
        if L < 2 and count:
            raise UsageError(f"{self.name}: the model has {count} perturbed weight tensor: "
                             "ln L = 0 leaves LAP's depth profile undefined; set "
                             "layer_number >= 2")
        if L < count:
            raise UsageError(f"invalid {self.name} layer_number {L}: the model has {count} "
                             f"perturbed weight tensors; valid: >= {count} (a smaller L "
                             "pushes the deepest tensors against the direction)")
        return layer_coefficients(count, L, self.gamma)

    def initial_noise(self, x):
        if self.delta_init == "zero":
            return torch.zeros_like(x)
        return ball_noise(x, self.eps if self.clamp else 2 * self.eps, self.norm)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        weights = ctx.weights
        if weights is None or weights.optimizer is None:
            raise RuntimeError(f"{self.name} takes an optimiser step inside its step: the "
                               "context must lend the weights and the optimiser")
        opt, named = weights.optimizer, weights.named()
        targets = perturbed_weights(named)
        coeffs = self.coefficients(len(targets))

        eta = clip_to_box(x, self.initial_noise(x))
        x0 = (x + eta).detach().requires_grad_(True)
        z0 = model(x0)
        if z0.dtype == torch.float16:
            raise UsageError(f"--method {self.name} does not train under --precision fp16: "
                             "its own optimiser step would need the run's loss scaler; "
                             "valid: fp32, bf16")
        l0 = self.ce(_at_least_fp32(z0), y, "none")

        # the official proxy: the weights and the optimiser state after the first forward
        w = [p.detach().clone() for _, p in named]
        saved = _optimizer_state(opt, deep=self.lap_mode != "shared-momentum")
        opt.zero_grad(set_to_none=True)
        l0.mean().backward()
        opt.step()

        delta = eta + self.alpha * self.eps * unit_step(x0.grad, self.norm)
        if self.clamp:
            delta = project(delta, self.eps, self.norm)
        delta = clip_to_box(x, delta).detach()

        with torch.no_grad():
            w_old = {n: w0 for (n, _), w0 in zip(named, w)}
            v = [weight_direction(w_old[n], p) for n, p in targets]
            for (_, p), w0 in zip(named, w):
                p.copy_(w0)
        _put_back_state(opt, saved)
        opt.zero_grad(set_to_none=True)
        weights.perturb({n: c * self.beta * v_k for (n, _), c, v_k in zip(targets, coeffs, v)},
                        restore=self.lap_mode == "restore")

        z1 = model((x + delta).clamp(0.0, 1.0))
        l1 = self.ce(_at_least_fp32(z1), y, "none")
        return StepOutput(loss=l1.mean(), logits=z1.detach(),
                          stats={"lap_start_loss_sum": l0.detach().sum()})

    def summarize(self, sums, n):
        return {"lap_start_loss": sums.get("lap_start_loss_sum", 0.0) / n if n else 0.0}


class VLAP(LAP):
    name = "v-lap"
    description = "V-LAP: FGSM (zero start, step eps) at layer-aware perturbed weights"

    def __init__(self, eps, alpha=1.0, delta_init="zero", clamp=1, beta=0.03, gamma=GAMMA,
                 layer_number=None, lap_mode="reference", norm="linf"):
        super().__init__(eps, alpha, delta_init, clamp, beta, gamma, layer_number, lap_mode,
                         norm)


class RLAP(LAP):
    name = "r-lap"
    description = "R-LAP: RS-FGSM (U(-eps,eps), step 1.25 eps) at layer-aware perturbed weights"

    def __init__(self, eps, alpha=1.25, delta_init="random", clamp=1, beta=0.002, gamma=GAMMA,
                 layer_number=None, lap_mode="reference", norm="linf"):
        super().__init__(eps, alpha, delta_init, clamp, beta, gamma, layer_number, lap_mode,
                         norm)


class NLAP(LAP):
    name = "n-lap"
    description = "N-LAP: N-FGSM (U(-2eps,2eps), step eps, no projection) at layer-aware " \
                  "perturbed weights"

    def __init__(self, eps, alpha=1.0, delta_init="random", clamp=0, beta=0.001, gamma=GAMMA,
                 layer_number=None, lap_mode="reference", norm="linf"):
        super().__init__(eps, alpha, delta_init, clamp, beta, gamma, layer_number, lap_mode,
                         norm)
