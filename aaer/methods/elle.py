"""ELLE and ELLE-A (Abad Rocamora et al., ICLR 2024): FGSM-AT + local linearity error.

    loss = mean CE(x_adv) + lamda * E
    E = mean_i ( l(x_c,i) - ((1 - a_i) l(x_a,i) + a_i l(x_b,i)) )^2
    x_a, x_b = x + U(-eps, eps),  a_i ~ U(0, 1),  x_c = (1 - a) x_a + a x_b

l is the per-example CE. As in the authors' code: the error is the mean over the batch of
squared per-example errors (an MSE of per-example losses, not of the mean loss); the three
points go through the model in ONE pass of 3B examples, separate from the training
forward at x_adv; the triplet points are not clipped to [0, 1]; the triplet radius is eps
whatever the attack's start noise. The attack is FGSM from x (``noise="zero"``, step eps)
by default; ``noise="n"`` gives N-FGSM + ELLE(-A) (the authors' N-FGSM+ELLE-A runs),
``noise="rs"`` RS-FGSM. Unlike the authors' code, x_adv is clipped to [0, 1] as in every
method here. (Their training loop also calls optimizer.step() twice per iteration; this
is not reproduced.) With a warm-up (SVHN) the triplet radius is scaled like the step.

lamda (ELLE): 1000 at eps <= 8/255, 5000 up to 20/255, 10000 above (the published
CIFAR-10 scripts; ``published_lamda``).

ELLE-A: lamda starts at 0. After each step, with E_t the step's error and mu, sigma the
mean and (population) standard deviation of ALL earlier errors of the run: if more than 2
errors were seen and E_t > mu + sensitivity * sigma, lamda <- lamda_max (4000), else
lamda <- decay * lamda (0.99); then E_t joins the history. The lamda used at step t is the
one decided after step t-1. All of this runs on the device (no host sync); the history is
kept as count, sum and sum of squares (float64), and survives a resume via state_dict.
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.base import Cost, StepContext, StepOutput, aae_statistics, ball_noise
from aaer.methods.noise import check_nonnegative, check_positive
from aaer.methods.regularised import RegularisedFGSM


def published_lamda(eps255: float) -> float:
    """ELLE's lamda of the published CIFAR-10 scripts at eps = eps255/255."""
    if eps255 <= 8:
        return 1000.0
    return 5000.0 if eps255 <= 20 else 10000.0


def sample_triplet(x, radius: float, norm: str = "linf"):
    """x_a, x_b uniform in the ``norm`` ball of ``radius`` around x, a ~ U(0,1) per example,
    x_c = (1 - a) x_a + a x_b. Returns (x_a, x_b, x_c, a) with a of shape [B]."""
    B = x.shape[0]
    x_ab = x.repeat(2, *([1] * (x.dim() - 1)))
    x_ab = x_ab + ball_noise(x_ab, radius, norm)
    x_a, x_b = x_ab[:B], x_ab[B:]
    a = torch.rand(B, device=x.device, dtype=x.dtype)
    a_ = a.view(B, *([1] * (x.dim() - 1)))
    x_c = (1 - a_) * x_a + a_ * x_b
    return x_a, x_b, x_c, a


def linearity_error(loss_fn, x_a, x_b, x_c, a):
    """mean_i (l(x_c)_i - ((1 - a_i) l(x_a)_i + a_i l(x_b)_i))^2.

    ``loss_fn`` maps a batch of inputs to per-example losses; it is called once on the
    3B-example batch [x_a; x_b; x_c]. Zero for a loss that is affine in the input.
    """
    B = a.shape[0]
    l = loss_fn(torch.cat([x_a, x_b, x_c]))
    l_a, l_b, l_c = l[:B], l[B:2 * B], l[2 * B:]
    a = a.to(l.dtype)
    return (l_c - ((1 - a) * l_a + a * l_b)).pow(2).mean()


class ELLE(RegularisedFGSM):
    name = "elle"
    description = "FGSM + lamda * local linearity error of the loss on random triplets"
    source = "Abad Rocamora et al., ICLR 2024"
    presets = {"eps8": {"lamda": 1000.0}, "eps16": {"lamda": 5000.0}}
    # a rollback after CO raises the linearity weight first
    strengthen_by = {"regularizer": "lamda", "step": "alpha"}

    weight_name = "ELLE weight"
    published_lamda = staticmethod(published_lamda)

    def cost(self) -> Cost:
        # attack: 1 forward + 1 input backward; training: x_adv (1) + the 3B triplet (3)
        return Cost(forward=5, backward=5)

    def elle_error(self, model, x, y, w: float = 1.0):
        x_a, x_b, x_c, a = sample_triplet(x, self.eps * w, self.norm)
        y3 = y.repeat(3)
        return linearity_error(
            lambda xs: self.ce(model(xs).float(), y3, "none"),
            x_a, x_b, x_c, a)

    def current_lamda(self, device):
        return self.lamda

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        z0, l0, z1, l1, _ = self.attack(model, x, y, ctx)
        stats = aae_statistics(z0, z1.detach(), l0, l1.detach())
        err = self.elle_error(model, x, y, self.warmup(ctx))
        lam = self.current_lamda(x.device)
        loss = l1.mean() + lam * err
        B = y.shape[0]
        stats["elle_error_sum"] = err.detach() * B
        self.after_step(err.detach(), stats, B)
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)

    def after_step(self, err, stats, batch_size: int) -> None:
        pass

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["elle_error"] = sums.get("elle_error_sum", 0.0) / n if n else 0.0
        return out


class ELLEA(ELLE):
    name = "elle-a"
    description = "ELLE with adaptive lamda: 0, raised to lamda_max when the error spikes"
    presets = {"eps8": {"lamda_max": 4000.0}, "eps16": {"lamda_max": 4000.0},
               "n-eps8": {"lamda_max": 4000.0, "noise": "n"},
               "n-eps16": {"lamda_max": 4000.0, "noise": "n"}}
    strengthen_by = {"regularizer": "lamda_max", "step": "alpha"}

    def __init__(self, eps, lamda_max=4000.0, sensitivity=2.0, decay=0.99, noise="zero",
                 alpha=1.0, warmup_epochs=0.0, norm="linf"):
        lamda_max = check_nonnegative("lamda_max (ELLE-A weight after a spike)", lamda_max)
        super().__init__(eps, lamda_max, noise, alpha, warmup_epochs, norm)
        self.lamda = None         # adaptive: see current_lamda
        self.lamda_max = lamda_max
        self.sensitivity = check_nonnegative("sensitivity (std multiples for a spike)",
                                             sensitivity)
        self.decay = check_positive("decay (lamda factor per step without a spike)", decay)
        if self.decay > 1:
            raise UsageError(f"decay (lamda factor per step without a spike) must be in "
                             f"(0, 1], got {decay!r}")
        self._host = {"lamda": 0.0, "n": 0.0, "s": 0.0, "ss": 0.0}
        self._dev = None          # the same on the device, float64 0-dim tensors

    def hparams(self):
        return {"eps": self.eps, "lamda_max": self.lamda_max, "sensitivity": self.sensitivity,
                "decay": self.decay, "noise": self.noise, "alpha": self.alpha,
                "warmup_epochs": self.warmup_epochs, "norm": self.norm}

    def _state(self, device):
        if self._dev is None or self._dev["lamda"].device != torch.device(device):
            src = self._host if self._dev is None else self._dev
            self._dev = {k: torch.as_tensor(v, dtype=torch.float64).to(device)
                         for k, v in src.items()}
        return self._dev

    def current_lamda(self, device):
        return self._state(device)["lamda"].float()

    def after_step(self, err, stats, batch_size: int) -> None:
        st = self._dev
        e = err.double()
        n, s, ss, lam = st["n"], st["s"], st["ss"], st["lamda"]
        mean = s / n.clamp(min=1.0)
        std = (ss / n.clamp(min=1.0) - mean * mean).clamp(min=0.0).sqrt()
        spike = (n > 2) & (e > mean + self.sensitivity * std)
        new_lam = torch.where(spike, torch.full_like(lam, self.lamda_max), lam * self.decay)
        self._dev = {"lamda": new_lam, "n": n + 1, "s": s + e, "ss": ss + e * e}
        stats["elle_lambda_sum"] = (lam * batch_size).float()
        stats["elle_raises"] = spike.float()

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["elle_lambda"] = sums.get("elle_lambda_sum", 0.0) / n if n else 0.0
        out["elle_raises"] = int(round(sums.get("elle_raises", 0.0)))
        out["elle_lambda_final"] = self.state_dict()["lamda"]
        return out

    def state_dict(self):
        if self._dev is not None:
            self._host = {k: float(v) for k, v in self._dev.items()}
        return dict(self._host)

    def load_state_dict(self, state):
        missing = {"lamda", "n", "s", "ss"} - set(state or {})
        if missing:
            raise UsageError(f"ELLE-A state lacks {sorted(missing)}; expected lamda, n, s, ss "
                             f"(got {sorted(state or {})})")
        self._host = {k: float(state[k]) for k in ("lamda", "n", "s", "ss")}
        self._dev = None
