"""FGSM-MEP-CS and FGSM-RS-CS (Zhao et al., ICCV 2023, "Fast Adversarial Training with
Smooth Convergence", arXiv 2308.12857): single-step AT + ConvergeSmooth (CS).

What CS is (as the official code has it: Mengnan-Zhao-Happy/ConvergeSmooth at d94f6bc,
``FGSM_MEP_CS.py`` lines 242-277, ``FGSM_RS_CS.py`` lines 155-208; docs/methods/
fgsm-mep-cs.md). Per batch, l_n is the smoothed cross-entropy of a reference forward
(the clean input for MEP-CS, the noisy start point for RS-CS) and u is the mean of l_n over
the whole previous epoch. Inside the "gated" epochs, when |l_n - u| > tau:

    loss <- loss + w2 l_n    if l_n > u   ("below fitting": descend on the clean loss)
    loss <- loss - w2 l_n    if l_n < u   ("over fitting": gradient ASCENT on it)

i.e. the gradient of w2 |l_n - u| with u a constant. tau = min(max(gamma / ratio, beta),
gamma) with beta = u_{e-1} - u_{e-2} signed (tau = gamma at the default ratio 1). The gated
epochs are those strictly inside (a + stride, b - stride) for consecutive entries a, b of
[0, milestones..., E] (E the run's epochs): the official decay_arr [0, 100, 105, 110] ties
the gate to its learning-rate milestones; aaer's schedules are not the authors', so the
milestones are a hyper-parameter (``milestones``, in epochs; default none: the gate is
every epoch in (stride, E - stride)). u is updated after every epoch (gated or not): u_e =
sum over the epoch's batches of l_n * B / N, rounded to float32 as the official
``torch.tensor(mean)``; at the start u = beta = 0. u, beta and the running sums of the
current epoch are method state (``state_dict``), so a resume mid-epoch is exact.

Why it works (the paper's argument): catastrophic overfitting shows up as a sudden drop of
the clean loss from one epoch to the next; CS keeps the loss "converging smoothly" by
pushing a batch's clean loss back towards last epoch's mean when it deviates by more than
the adaptive band tau (ascent when it falls too fast).

How the official code differs from the paper (per a third-party summary: the paper text
is not in the stored sources): only the batch-based w2 term (no w1 term on the adversarial
loss, no example-based form, no weight centralisation); beta signed instead of
|u_{e-1} - u_{e-2}| (no effect at ratio 1).

FGSM-MEP-CS: the FGSM-MEP attack of FGSM-PGI (aaer.methods.pgi: per-example momentum
prior, reset every ``epochs_reset`` epochs, factor smoothing), the training loss LS(f(x +
delta), t) WITHOUT FGSM-PGI's regulariser (the official ``--reg-single`` flag is off by
default; ``reg_single=True`` adds lamda * MSE(z1, z0)), l_n = LS(f(x), t) from a third,
clean forward (``initialize=True``: l_n = LS at the prior point, forward 1, no third
forward). The official ``--reg-multi`` term is a product of signs with zero gradient
(it changes the logged loss only) and is not offered.

FGSM-RS-CS: the official ``FGSM_RS_CS.py`` does NOT run as published (it reads
``args.lr``, ``args.epochs`` and ``args.stride``, which its argparse does not define, and
trains on the MEP script's loader, one batch of 50000 uncropped 40x40 images). Implemented
here is the body of its ``train`` read as intended, per minibatch of augmented images (as
the FastAT Benchmark repaired it): x_s = clip_[0,1](x + U(-eps, eps)); the attack gradient
is that of PLAIN cross-entropy at x_s; x_adv = clip_[0,1](x_s + alpha sign(g)) with NO
projection onto the eps-ball (|x_adv - x| reaches eps + alpha); loss = LS(f(x_adv), t) +
CS with l_n = LS(f(x_s), t) at the noisy start (a third forward; the script's variable
``data`` was overwritten with the noisy point), not at the clean image.

Recipe. Official defaults (both scripts): eps 16/255, alpha 16/255 (1.0 eps), factor 0.6,
gamma 0.03, ratio 1, stride 1, w2 1.0, epochs_reset 40, momentum_decay 0.3 (MEP), 110
epochs with lr 0.1 x0.1 at epochs 100 and 105 (decay_arr). The README puts the paper's
values in a supplement that is not available; the FastAT Benchmark
(``configs/*/fgsm_{mep,rs}_cs.yaml``) uses the same values at eps 8/255 on CIFAR-10/100 and
Tiny-ImageNet. They are the defaults here. aaer's multistep schedule cannot place its
milestones at 100/110 and 105/110, so ``train_overrides`` is empty; give
``milestones=[...]`` that match the schedule you run.

Cost: MEP-CS 3 forwards (prior point, adversarial, clean) and up to 3 backward passes (the
input gradient, the final backward through the adversarial forward and, on batches where
CS fires, through the clean forward; +1 through forward 1 with ``reg_single``;
``initialize`` drops the clean forward). RS-CS: 3 forwards, up to 3 backward passes.

Strengthening (``--on-co rollback``): alpha x 0.75 first. The CS term is gated: it acts
only inside the gate epochs and on batches whose l_n leaves the band, so doubling w2 can
change nothing during a CO episode, and neither configuration has an always-on
regulariser; a smaller step always acts (for RS-CS, without a projection, the step sets the
radius eps + alpha, the known lever against CO). w2 x 2 stays available.

L2: not defined (MEP: sign-momentum prior; RS-CS: only L-inf runs are published); refused.
"""
from __future__ import annotations

import torch

from aaer.checks import number
from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput, forward_with_input_grad,
                               uniform_noise)
from aaer.methods.noise import check_count, check_nonnegative, check_positive
from aaer.methods.pgi import aae_stats, check_factor, mep_attack, refuse_l2
from aaer.methods.prior import (check_init, factor_targets, logit_mse, prior_slots,
                                smoothed_ce)


def gate_open(epoch: int, total_epochs: int, milestones, stride: float) -> bool:
    """Is ``epoch`` (0-based) strictly inside (a + stride, b - stride) for two consecutive
    entries a, b of [0, milestones..., total_epochs]?"""
    bounds = [0, *milestones, total_epochs]
    return any(a + stride < epoch < b - stride for a, b in zip(bounds, bounds[1:]))


def check_milestones(milestones) -> list:
    if milestones is None:
        return []
    if isinstance(milestones, (int, float)) and not isinstance(milestones, bool):
        milestones = [milestones]
    if not isinstance(milestones, (list, tuple)):
        raise UsageError(f"invalid milestones {milestones!r}: must be a list of epochs, e.g. "
                         "[100, 105]")
    out = [number("milestones (learning-rate milestones, in epochs)", m, low=0, low_open=True)
           for m in milestones]
    if out != sorted(out):
        raise UsageError(f"invalid milestones {milestones!r}: must be increasing")
    return [int(m) if float(m).is_integer() else m for m in out]


class ConvergeSmooth(Method):
    """The CS term and its per-epoch state; subclasses make the attack and l_n."""

    single_step = True
    strengthen_by = {"step": "alpha", "regularizer": "w2"}
    own_label_smoothing = "factor"      # its factor targets: --label-smoothing is refused
    log_columns = (("Ab NUM", "aae_count", "%d"), ("CS fired", "cs_fired", "%.3f"))

    def __init__(self, eps, alpha, factor, gamma, ratio, w2, stride, milestones, norm):
        super().__init__(eps, norm)
        self.alpha = check_positive("alpha (step as a multiple of eps)", alpha)
        self.factor = check_factor(factor)
        self.gamma = check_positive("gamma (CS band gamma_max)", gamma)
        self.ratio = number("ratio (CS gamma_max / gamma_min)", ratio, low=1)
        self.w2 = check_nonnegative("w2 (weight of the CS term)", w2)
        self.stride = check_nonnegative("stride (CS gate margin, in epochs)", stride)
        self.milestones = check_milestones(milestones)
        # u: last epoch's mean l_n; beta: its change; sum, n: this epoch's so far
        self._host = {"u": 0.0, "beta": 0.0, "sum": 0.0, "n": 0.0, "epoch": -1}
        self._dev = None

    def cs_hparams(self):
        return {"gamma": self.gamma, "ratio": self.ratio, "w2": self.w2,
                "stride": self.stride, "milestones": list(self.milestones)}

    # -- state ----------------------------------------------------------------------------
    def _state(self, device):
        if self._dev is None or self._dev["u"].device != torch.device(device):
            src = self._host if self._dev is None else self._dev
            self._dev = {"u": torch.as_tensor(float(src["u"]), dtype=torch.float32).to(device),
                         "beta": torch.as_tensor(float(src["beta"]),
                                                 dtype=torch.float32).to(device),
                         "sum": torch.as_tensor(float(src["sum"]),
                                                dtype=torch.float64).to(device),
                         "n": torch.as_tensor(float(src["n"]), dtype=torch.float64).to(device),
                         "epoch": int(src["epoch"])}
        return self._dev

    def _roll(self, epoch: int, device):
        """At the first step of a new epoch: u, beta from the finished epoch's sums."""
        st = self._state(device)
        if st["epoch"] != epoch:
            if st["epoch"] >= 0:
                u = (st["sum"] / st["n"]).float()
                st["beta"], st["u"] = u - st["u"], u
            st["sum"] = torch.zeros_like(st["sum"])
            st["n"] = torch.zeros_like(st["n"])
            st["epoch"] = epoch
        return st

    def state_dict(self):
        if self._dev is not None:
            self._host = {k: (v if k == "epoch" else float(v)) for k, v in self._dev.items()}
        return dict(self._host)

    def load_state_dict(self, state):
        missing = {"u", "beta", "sum", "n", "epoch"} - set(state or {})
        if missing:
            raise ValueError(f"{self.name} state lacks {sorted(missing)}; expected u, beta, "
                             f"sum, n, epoch (got {sorted(state or {})})")
        self._host = {k: (int(state[k]) if k == "epoch" else float(state[k]))
                      for k in ("u", "beta", "sum", "n", "epoch")}
        self._dev = None

    # -- the term -------------------------------------------------------------------------
    def cs_term(self, l_n, ctx: StepContext, batch_size: int, stats: dict):
        """w2 * s * l_n with s = sign(l_n - u) where CS fires, 0 elsewhere; records l_n in
        the epoch's sums. ``l_n``: the batch's reference loss (with its graph)."""
        st = self._roll(ctx.epoch, l_n.device)
        value = l_n.detach().float()
        b = torch.full((), float(batch_size), dtype=torch.float64, device=l_n.device)
        total = value.double() * b
        if ctx.batch_sum is not None:           # the global batch's l_n decides
            both = ctx.batch_sum(torch.stack([total, b]))
            total, b = both[0], both[1]
            value = (total / b).float()
        st["sum"] = st["sum"] + total
        st["n"] = st["n"] + b
        stats["cs_clean_loss_sum"] = l_n.detach().float() * batch_size
        if not gate_open(ctx.epoch, ctx.total_epochs, self.milestones, self.stride):
            zero = torch.zeros((), device=l_n.device)
            stats["cs_fired_sum"], stats["cs_ascent_sum"] = zero, zero
            return None
        gamma_max = torch.tensor(self.gamma, device=l_n.device)
        tau = torch.minimum(torch.maximum(gamma_max / self.ratio, st["beta"]), gamma_max)
        diff = value - st["u"]
        fired = diff.abs() > tau
        s = torch.where(diff > 0, 1.0, -1.0) * fired.float()
        stats["cs_fired_sum"] = fired.float() * batch_size
        stats["cs_ascent_sum"] = (fired & (diff <= 0)).float() * batch_size
        return self.w2 * s * l_n

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        for k in ("cs_clean_loss", "cs_fired", "cs_ascent"):
            out[k] = sums.get(k + "_sum", 0.0) / n if n else 0.0
        return out


class FGSMMEPCS(ConvergeSmooth):
    name = "fgsm-mep-cs"
    description = ("FGSM-MEP (per-example momentum prior) + ConvergeSmooth: ascent on the "
                   "clean loss when it falls more than gamma below last epoch's mean")
    source = "Zhao et al., ICCV 2023 (Mengnan-Zhao-Happy/ConvergeSmooth, FGSM_MEP_CS.py)"

    def __init__(self, eps, alpha=1.0, momentum_decay=0.3, epochs_reset=40, factor=0.6,
                 gamma=0.03, ratio=1.0, w2=1.0, stride=1.0, milestones=None,
                 initialize=False, reg_single=False, lamda=10.0, delta_init="random",
                 norm="linf"):
        super().__init__(eps, alpha, factor, gamma, ratio, w2, stride, milestones, norm)
        refuse_l2("FGSM-MEP-CS", norm, "its prior is a sign-momentum step projected to the "
                  "cube")
        self.momentum_decay = check_nonnegative("momentum_decay (mu of the prior's momentum)",
                                                momentum_decay)
        self.epochs_reset = check_count("epochs_reset (epochs between prior resets)",
                                        epochs_reset, minimum=1)
        for k, v in (("initialize", initialize), ("reg_single", reg_single)):
            if not isinstance(v, bool):
                raise UsageError(f"invalid {k} {v!r}: must be true or false")
        self.initialize, self.reg_single = initialize, reg_single
        self.lamda = check_nonnegative("lamda (weight of MSE(z_adv, z_prior), reg_single)",
                                       lamda)
        self.delta_init = check_init(delta_init)

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "momentum_decay": self.momentum_decay,
                "epochs_reset": self.epochs_reset, "factor": self.factor, **self.cs_hparams(),
                "initialize": self.initialize, "reg_single": self.reg_single,
                "lamda": self.lamda, "delta_init": self.delta_init, "norm": self.norm}

    def cost(self) -> Cost:
        # final backward: adversarial forward, clean forward (CS), forward 1 (reg_single or
        # initialize); plus the input gradient
        through = 1 + (0 if self.initialize else 1) + \
            (1 if self.reg_single or self.initialize else 0)
        return Cost(forward=2 if self.initialize else 3, backward=1 + through)

    def memory_spec(self, example_shape):
        return prior_slots(example_shape, momentum=True)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        keep = self.initialize or self.reg_single
        z0, l0, delta, t = mep_attack(model, x, y, ctx, self.eps, self.alpha * self.eps,
                                      self.momentum_decay, self.epochs_reset, self.factor,
                                      keep_graph=keep, init=self.delta_init)
        z1 = model(x + delta)
        l_n = l0 if self.initialize else smoothed_ce(model(x), t)
        loss = smoothed_ce(z1, t)
        if self.reg_single:
            loss = loss + self.lamda * logit_mse(z1, z0)
        stats = aae_stats(z0, z1, y, self.aae_num_classes)
        cs = self.cs_term(l_n, ctx, y.shape[0], stats)
        if cs is not None:
            loss = loss + cs
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)


class FGSMRSCS(ConvergeSmooth):
    name = "fgsm-rs-cs"
    description = ("FGSM from U(-eps,eps), no projection, + ConvergeSmooth on the loss at "
                   "the noisy start")
    source = ("Zhao et al., ICCV 2023 (Mengnan-Zhao-Happy/ConvergeSmooth, FGSM_RS_CS.py, "
              "read as intended)")

    def __init__(self, eps, alpha=1.0, factor=0.6, gamma=0.03, ratio=1.0, w2=1.0,
                 stride=1.0, milestones=None, norm="linf"):
        super().__init__(eps, alpha, factor, gamma, ratio, w2, stride, milestones, norm)
        refuse_l2("FGSM-RS-CS", norm, "only L-inf runs are published")

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "factor": self.factor,
                **self.cs_hparams(), "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=3, backward=3)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        x_s = (x + uniform_noise(x, self.eps)).clamp(0.0, 1.0)
        z0, _, g = forward_with_input_grad(model, x_s, y)        # plain CE, input only
        x_adv = (x_s + self.alpha * self.eps * g.sign()).clamp(0.0, 1.0)   # no projection
        z1 = model(x_adv)
        t = factor_targets(y, z1.shape[1], self.factor)
        l_n = smoothed_ce(model(x_s), t)        # at the noisy start, not the clean image
        loss = smoothed_ce(z1, t)
        stats = aae_stats(z0, z1, y, self.aae_num_classes)
        cs = self.cs_term(l_n, ctx, y.shape[0], stats)
        if cs is not None:
            loss = loss + cs
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)
