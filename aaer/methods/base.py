"""What every training method shares: the step interface and the single-step primitives.

A method turns one clean batch into a loss to minimise. It knows nothing about data
loading, logging, devices or schedules; the training loop knows nothing about any one
method. The loop calls ``method.step(model, x, y, ctx)`` ``method.replays`` times per
minibatch, each call followed by one optimiser step.

Statistics are returned as 0-dim tensors that are *sums over the batch* and stay on the
device; the loop adds them up over an epoch and calls ``method.summarize`` once, so no
step ever synchronises with the host.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from aaer.checks import number
from aaer.errors import UsageError
from aaer.threat import check_norm

Tensor = torch.Tensor


@dataclass
class StepContext:
    """What the loop tells a method about where training stands, and what it lends it."""

    epoch: int = 0
    iteration: int = 0          # index of the batch within the epoch
    iters_per_epoch: int = 1
    total_epochs: int = 1
    # sums a per-batch statistic over the global batch (DDP: over the ranks); None: this
    # process's batch is the whole batch
    batch_sum: Optional[Callable[[Tensor], Tensor]] = None
    # the training-set index of every example of the batch (a long tensor on the batch's
    # device); what per-example state is keyed by
    index: Optional[Tensor] = None
    # the method's per-example state (``Method.memory_spec``), None when it declared none
    memory: Optional["ExampleMemory"] = None
    # the model's weights, to perturb inside the step (``Weights``)
    weights: Optional["Weights"] = None
    # the engine's averaged model (--weight-average), None when off
    averaged: Optional[Any] = None

    @property
    def progress(self) -> float:
        """Epochs completed, fractional: epoch + i / len(loader) (SPEC §2 warm-up)."""
        return self.epoch + self.iteration / max(self.iters_per_epoch, 1)


@dataclass
class StepOutput:
    loss: Tensor                 # scalar to minimise
    logits: Tensor               # the logits train accuracy is measured on (adversarial z1)
    stats: dict[str, Tensor] = field(default_factory=dict)  # batch sums, on device


@dataclass(frozen=True)
class MemorySlot:
    """One tensor a method keeps per training example: the shape of one example's entry,
    its dtype and initial value."""

    shape: tuple = ()
    dtype: torch.dtype = torch.float32
    fill: float = 0.0


class ExampleMemory:
    """A method's per-example state: for each slot a tensor with one row per training
    example, read and written by the examples' training-set indices (``ctx.index``).

    The engine allocates it on the training device, saves it in every checkpoint and rewind
    point and restores it exactly. Under data parallelism every process holds the whole
    memory: ``write`` gathers the rows every process writes in a step, so all copies stay
    equal (``gather``, given by the engine; None in one process).
    """

    def __init__(self, slots: dict[str, Tensor], gather=None):
        self.slots, self._gather = dict(slots), gather

    def read(self, name: str, index: Tensor) -> Tensor:
        """The rows of ``index`` (a copy)."""
        return self.slots[name].index_select(0, index)

    def write(self, name: str, index: Tensor, values: Tensor) -> None:
        """Set the rows of ``index`` to ``values`` (detached)."""
        values = values.detach().to(self.slots[name].dtype)
        if self._gather is not None:
            index, values = self._gather(index, values)
            keep = first_occurrence(index)          # a padded global batch repeats examples
            index, values = index[keep], values[keep]
        self.slots[name].index_copy_(0, index, values.contiguous())

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.slots.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.slots):
            raise ValueError(f"per-example state has slots {sorted(state)}, the method "
                             f"declares {sorted(self.slots)}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(self.slots[k].shape):
                raise ValueError(f"per-example state {k!r} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(self.slots[k].shape)}")
            self.slots[k].copy_(v)


def first_occurrence(index: Tensor) -> Tensor:
    """A mask keeping the first occurrence of each value of ``index`` (deterministic)."""
    order = torch.sort(index, stable=True).indices
    ranked = index[order]
    first = torch.ones_like(ranked, dtype=torch.bool)
    first[1:] = ranked[1:] != ranked[:-1]
    keep = torch.zeros_like(first)
    keep[order] = first
    return keep


class Weights:
    """The network's weights as a method may change them inside its step.

    ``perturb(deltas)`` adds a perturbation to named parameters before the method's
    forward passes. With ``restore=True`` (SAM-like use) the engine puts the saved weights
    back after the backward pass and before the optimiser step, so the gradient taken at
    the perturbed weights updates the unperturbed ones; with ``restore=False`` the
    perturbation stays in the weights (LAP's official code). ``optimizer`` is the run's
    optimiser, for a method whose step is defined through it (LAP's reference mode).
    """

    def __init__(self, net, optimizer=None):
        self.net, self.optimizer = net, optimizer
        self._saved: dict[str, Tensor] = {}

    def named(self) -> list[tuple[str, Tensor]]:
        """(name, parameter) in ``named_parameters`` order (the lineage's names)."""
        return list(self.net.named_parameters())

    @torch.no_grad()
    def perturb(self, deltas: dict[str, Tensor], restore: bool = True) -> None:
        params = dict(self.net.named_parameters())
        unknown = sorted(set(deltas) - set(params))
        if unknown:
            raise KeyError(f"no parameter named {', '.join(unknown)}")
        for name, d in deltas.items():
            p = params[name]
            if restore and name not in self._saved:
                self._saved[name] = p.detach().clone()
            p.add_(d.to(p.dtype))

    @property
    def perturbed(self) -> bool:
        """Are there weights to put back before the optimiser step?"""
        return bool(self._saved)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every weight ``perturb(..., restore=True)`` changed."""
        params = dict(self.net.named_parameters())
        for name, saved in self._saved.items():
            params[name].copy_(saved)
        self._saved.clear()


@dataclass(frozen=True)
class Cost:
    """Work per training step, in units of one forward / one backward pass of the model."""

    forward: int
    backward: int
    double_backprop: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"forward": self.forward, "backward": self.backward,
                "double_backprop": self.double_backprop}


class Method:
    """Base class: one subclass per training method, registered by name."""

    name: str = ""
    description: str = ""
    source: str = ""
    single_step: bool = False    # makes a single-step attack: AAE statistics are logged
    replays: int = 1             # optimiser steps per minibatch (Free-AT: m)
    aae_num_classes: int = 0     # > 0: also count AAEs per class (set by the trainer)
    # the method's recipe (aaer.config.resolve applies it): named presets of its
    # hyper-parameters, its changes to the training settings, its published table
    presets: dict[str, dict[str, Any]] = {}
    train_overrides: dict[str, Any] = {}
    # how a rollback after catastrophic overfitting strengthens it: change -> attribute;
    # the first is what --rollback-change auto picks
    strengthen_by: dict[str, str] = {}
    # its columns of the per-epoch log line: (header, key of summarize's output, format)
    log_columns: tuple[tuple[str, str, str], ...] = ()
    # the step reads the engine's averaged model (ctx.averaged): --weight-average must be on
    uses_averaged_model: bool = False
    # label smoothing S of every cross-entropy on the true labels inside the step (the
    # attack's, a regulariser's, the training loss): target (1 - S) one-hot + S / K, PyTorch's
    # ``label_smoothing``. Set through ``set_label_smoothing`` (the trainer: --label-smoothing);
    # every CE goes through ``ce`` or ``forward_with_input_grad(..., smoothing)``
    smoothing: float = 0.0
    # the name of the hyper-parameter with which the method smooths its labels itself
    # (FGSM-PGI's factor, FGSM-UAP's label_smoothing, ...): it refuses --label-smoothing > 0
    own_label_smoothing: str = ""

    def __init__(self, eps: float, norm: str = "linf"):
        self.eps = number("eps (pixel units, e.g. 8/255)", eps, low=0, low_open=True)
        self.norm = check_norm(norm)

    # -- the recipe --------------------------------------------------------------------
    @classmethod
    def keywords(cls) -> list[str]:
        """The hyper-parameters the constructor takes (besides eps)."""
        return [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "eps")]

    @classmethod
    def published(cls, dataset: str, epsilon: float,
                  norm: str = "linf") -> tuple[dict[str, Any], str] | None:
        """Hyper-parameters its authors published for this data set, radius (as --epsilon
        writes it) and norm, and where they come from ("published cifar10 eps 16"); None
        when there is no table."""
        return None

    epochs_rule = ""

    def epochs_for(self, epochs: int) -> int:
        """The epochs to train for an epoch budget (Free-AT divides it by its replays)."""
        return epochs

    def strengthen_target(self, change: str = "auto") -> tuple[str, str]:
        """(change, attribute) a rollback modifies, or UsageError when it cannot apply."""
        if change == "auto" and self.strengthen_by:
            change = next(iter(self.strengthen_by))
        if change in self.strengthen_by:
            return change, self.strengthen_by[change]
        if change == "regularizer":
            raise UsageError(f"--rollback-change regularizer: method {self.name!r} has no "
                             f"regulariser weight to raise; valid: "
                             f"{', '.join(self.strengthen_by) or 'none'}")
        raise UsageError(f"--on-co rollback: method {self.name!r} has no attack step "
                         "(alpha) to shrink; use --on-co warn or stop")

    def strengthen(self, change: str, factors: dict[str, float]) -> dict[str, Any]:
        """Apply a rollback's change: the attribute times ``factors[change]`` (change
        "auto": the method's first); returns what changed."""
        change, attr = self.strengthen_target(change)
        factor = factors[change]
        old = float(getattr(self, attr))
        setattr(self, attr, old * factor)
        return {"change": change, "param": attr, "old": old, "new": old * factor}

    def apply_change(self, record: dict[str, Any]) -> None:
        """Re-apply a change ``strengthen`` made (a resumed run continues with it)."""
        setattr(self, record["param"], record["new"])

    # -- label smoothing -----------------------------------------------------------------
    def set_label_smoothing(self, s: float) -> None:
        """Smooth every CE on the true labels of the step by ``s`` in [0, 1) (the run's
        --label-smoothing). A method that smooths its labels itself refuses s > 0: smoothing
        twice would go unnoticed (the FastAT Benchmark does it to FGSM-MEP-CS, FGSM-RS-CS
        and FGSM-PCO)."""
        s = number("--label-smoothing", s, low=0, high=1, high_open=True)
        if s > 0 and self.own_label_smoothing:
            key = self.own_label_smoothing
            raise UsageError(f"--method {self.name} smooths its labels itself ({key} "
                             f"{getattr(self, key):g}); set it with --set {key}=..., not "
                             f"--label-smoothing (got {s:g})")
        self.smoothing = s

    def ce(self, z: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy of logits ``z`` on the true labels ``y``, label-smoothed by the
        run's ``smoothing``: (1 - S) CE + S mean_k(-log softmax(z)_k). ``z`` is taken in the
        precision the caller gives (callers pass z.float()); S = 0 is torch's plain CE, bit
        for bit."""
        return F.cross_entropy(z, y, reduction=reduction, label_smoothing=self.smoothing)

    # -- the interface -------------------------------------------------------------
    def step(self, model, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def cost(self) -> Cost:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """Every setting that defines this method's behaviour (goes to config.json)."""
        return {"eps": self.eps}

    def summarize(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """Turn an epoch's summed statistics into the logged per-epoch values."""
        out = summarize_aae(sums, n) if self.single_step else {}
        return out

    def memory_spec(self, example_shape: tuple) -> dict[str, MemorySlot]:
        """The per-example state the step keeps (ctx.memory), by slot name, for inputs of
        ``example_shape`` (C, H, W); none by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (e.g. an adaptive lambda)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def with_defaults(init: Callable, **defaults) -> Callable:
    """``init``, a method's constructor, with other defaults for some of its keywords.

    The variants of one method (FGSM, RS-FGSM and N-FGSM; RS- and N-AAER) differ only in
    their defaults: each is its parent's constructor with its own, so the signature and
    the checks are written once and ``Method.keywords`` reads the same names.
    """
    sig = inspect.signature(init)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:                 # a typo in a variant's definition: a bug, not a setting
        raise TypeError(f"with_defaults: {init.__qualname__} takes no {', '.join(unknown)}")
    sig = sig.replace(parameters=[p.replace(default=defaults.get(p.name, p.default))
                                  for p in sig.parameters.values()])

    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(*bound.args, **bound.kwargs)

    __init__.__signature__ = sig
    __init__.__doc__ = init.__doc__
    return __init__


# -- single-step primitives ------------------------------------------------------------

def clip_to_box(x: Tensor, delta: Tensor) -> Tensor:
    """Clip delta so that x + delta stays in [0, 1]."""
    return torch.clamp(x + delta, 0.0, 1.0) - x


def _like_x(noise: Tensor, x: Tensor) -> Tensor:
    # noise is drawn in NCHW order whatever x's memory format, so channels_last gets the
    # same noise
    return noise.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and \
        x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else noise


def uniform_noise(x: Tensor, radius: float) -> Tensor:
    """U(-radius, radius) per pixel: uniform in the L-inf ball."""
    noise = torch.empty_like(x, memory_format=torch.contiguous_format).uniform_(-radius, radius)
    return _like_x(noise, x)


# -- the threat model: L-inf or L2 (SPEC §10; the norms themselves: aaer.threat) ---------


def l2_norms(t: Tensor) -> Tensor:
    """Per-example L2 norm over every pixel and channel, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def ball_noise(x: Tensor, radius: float, norm: str) -> Tensor:
    """Uniform in the ``norm`` ball of ``radius`` around 0, one draw per example. L2: an
    isotropic direction (normalised Gaussian) times radius * U^(1/d), d pixels."""
    if norm == "linf":
        return uniform_noise(x, radius)
    g = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    u = torch.rand(x.shape[0], dtype=x.dtype, device=x.device)
    r = radius * u.pow(1.0 / x[0].numel())
    noise = g / l2_norms(g).clamp_min(1e-12) * r.view(-1, *([1] * (x.dim() - 1)))
    return _like_x(noise, x)


def unit_step(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent unit step: sign(grad) (L-inf) or grad / ||grad||_2 per example
    (L2; a zero gradient gives a zero step)."""
    if norm == "linf":
        return grad.sign()
    return grad / l2_norms(grad).clamp_min(1e-12)


def project(delta: Tensor, radius, norm: str) -> Tensor:
    """delta projected onto the ``norm`` ball of ``radius``: clipped per pixel (L-inf) or
    scaled down to length radius when longer (L2)."""
    if norm == "linf":
        return delta.clamp(-radius, radius)
    n = l2_norms(delta)
    return delta * torch.clamp(radius / n.clamp_min(1e-12), max=1.0)


def forward_with_input_grad(model, x_in: Tensor, y: Tensor, smoothing: float = 0.0):
    """Forward at x_in, per-example CE, and the gradient of mean CE w.r.t. the input only.

    ``smoothing``: the CE's label smoothing (``Method.smoothing``; 0: plain CE).
    ``torch.autograd.grad`` with the input as the only target skips the weight-gradient
    kernels that ``loss.backward()`` would run and then throw away (SPEC §2).
    Returns (logits, per-example loss, grad); logits and loss are detached.
    """
    x_in = x_in.detach().requires_grad_(True)
    z = model(x_in)
    l = F.cross_entropy(z.float(), y, reduction="none", label_smoothing=smoothing)
    if z.dtype == torch.float16:
        # fp16 backward of a batch mean underflows (per-pixel grads ~1e-7): differentiate
        # the sum, then divide, as GradScaler does for weight gradients
        (grad,) = torch.autograd.grad(l.sum(), x_in)
        grad = grad / l.shape[0]
    else:
        (grad,) = torch.autograd.grad(l.mean(), x_in)
    return z.detach(), l.detach(), grad.detach()


def classifier(model) -> torch.nn.Linear:
    """The model's last ``nn.Linear`` in module order: the classifier of every aaer network
    (PreActResNet18 ``linear``, ResNet18/WRN/small CNNs ``fc``). Its input is the penultimate
    features, its ``out_features`` the number of classes. Works through the DDP and
    torch.compile wrappers (they hold the model as a submodule)."""
    head = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            head = m
    if head is None:
        net = getattr(getattr(model, "_orig_mod", model), "module", model)
        raise UsageError(f"the model {type(getattr(net, 'net', net)).__name__} has no "
                         "torch.nn.Linear classifier; this method reads the penultimate "
                         "features or the number of classes from one (every aaer model has "
                         "one: see `aaer models`)")
    return head


def penultimate(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features, logits) of ``model`` at ``x``: the features are the input of its last
    ``nn.Linear`` (``classifier``), taken by a forward pre-hook during one ordinary forward,
    flattened to [B, F]. Runs in the model's current mode (train mode updates BatchNorm
    statistics, as a forward does) and under the caller's grad mode. Under torch.compile
    the hook goes on the eager module, so the compiled graph is never re-traced."""
    net = getattr(model, "_orig_mod", model)
    head = classifier(net)
    seen: list[Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        z = net(x)
    finally:
        handle.remove()
    if not seen:
        raise UsageError(f"the model's last nn.Linear ({head}) was not called by its forward; "
                         "penultimate features cannot be read from it")
    return seen[-1].flatten(1), z


def one_hot_rows(keys: Tensor, n: int, dtype=torch.float32) -> Tensor:
    """[B, n] one-hot matrix of the long tensor ``keys`` (rows of values outside [0, n)
    are all zero); no range check, so no host sync on any device."""
    return (keys.view(-1, 1) == torch.arange(n, device=keys.device).view(1, -1)).to(dtype)


def shared_rand(shape, like: Tensor, batch_sum=None) -> Tensor:
    """U(0, 1) draws (float32, on ``like``'s device) that every process of a data-parallel
    run shares: each process draws its own and the fractional part of their sum
    (``batch_sum``, StepContext's) is again U(0, 1) (the sum modulo 1 of independent
    uniforms is uniform) and the same on every process. In one process (``batch_sum``
    None): plain ``torch.rand`` from the global generator."""
    if batch_sum is None:
        return torch.rand(shape, device=like.device, dtype=torch.float32)
    u = torch.rand(shape, device=like.device, dtype=torch.float64)
    return torch.frac(batch_sum(u)).float()


def aae_statistics(z0: Tensor, z1: Tensor, l0: Tensor, l1: Tensor, y: Tensor | None = None,
                   num_classes: int = 0) -> dict[str, Tensor]:
    """Abnormal-adversarial-example statistics of one batch, as device-resident sums.

    AAE: the attack step lowered the loss, l0 > l1 (l0 at the noisy start x+eta).
    With labels ``y`` and ``num_classes`` > 0, also the AAE count and the number of
    examples per class (vectors of length num_classes).
    """
    with torch.no_grad():
        z0, z1, l0, l1 = z0.float(), z1.float(), l0.float(), l1.float()
        aae_mask = l0 > l1
        aae = aae_mask.float()
        var = (z1 - z0).pow(2).sum(dim=1)           # ||z1 - z0||^2 per example
        out = {
            "aae_count": aae.sum(),
            "aae_ce_drop_sum": (aae * (l0 - l1)).sum(),
            "aae_var_sum": (aae * var).sum(),
            "nae_var_sum": ((1 - aae) * var).sum(),
        }
        if y is not None and num_classes > 0:
            onehot = F.one_hot(y, num_classes).float()      # a matmul: deterministic sums
            out["aae_count_per_class"] = aae @ onehot
            out["n_per_class"] = onehot.sum(dim=0)
        return out


def summarize_aae(sums: dict[str, Any], n: int) -> dict[str, Any]:
    m = sums.get("aae_count", 0.0)
    out = {
        "aae_count": int(round(m)),
        "aae_fraction": m / n if n else 0.0,
        "aae_ce_drop": sums.get("aae_ce_drop_sum", 0.0) / m if m else 0.0,
        "aae_logit_var": sums.get("aae_var_sum", 0.0) / m if m else 0.0,
        "nae_logit_var": sums.get("nae_var_sum", 0.0) / (n - m) if n - m else 0.0,
    }
    if "aae_count_per_class" in sums:
        counts, totals = sums["aae_count_per_class"], sums["n_per_class"]
        out["aae_count_per_class"] = [int(round(c)) for c in counts]
        out["aae_fraction_per_class"] = [c / t if t else 0.0 for c, t in zip(counts, totals)]
    return out


def log_linear(eps255: float, points: dict[float, float]) -> float:
    """Interpolate a hyper-parameter log-linearly in eps between two published points."""
    (e0, v0), (e1, v1) = sorted(points.items())
    t = (math.log(eps255) - math.log(e0)) / (math.log(e1) - math.log(e0))
    return math.exp(math.log(v0) + t * (math.log(v1) - math.log(v0)))


def bernoulli_noise(x: Tensor, radius: float) -> Tensor:
    """+-radius per pixel, each sign with probability 1/2: a vertex of the L-inf cube, the
    start of GAT and NuAT. Drawn as radius * sign(0.5 - U(0, 1)), as their code does (a
    draw of exactly 0.5, probability 2^-24, gives 0), in NCHW order whatever x's memory
    format (as ``uniform_noise``)."""
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device)
    return _like_x(radius * torch.sign(0.5 - u), x)


def published_entry(table: dict, dataset: str, eps255: float,
                    like: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """A method's published values for a data set and radius, and where they come from.

    ``table`` maps (data set, eps in 1/255) to the values its authors published. Outside
    it, the entry of the same data set (else of ``like[dataset]``, else of the table's
    first data set) at the nearest eps in log scale is used, and the source says so:
    "published cifar10 eps 8" or "nearest published: cifar10 eps 8 (none for svhn eps 8)".
    """
    sets = list(dict.fromkeys(d for d, _ in table))
    ds = dataset if dataset in sets else (like or {}).get(dataset, sets[0])
    radii = sorted(e for d, e in table if d == ds)
    nearest = min(radii, key=lambda e: abs(math.log(e) - math.log(max(eps255, 1e-6))))
    exact = ds == dataset and abs(nearest - eps255) < 1e-9
    source = (f"published {dataset} eps {nearest:g}" if exact else
              f"nearest published: {ds} eps {nearest:g} (none for {dataset} eps {eps255:.4g})")
    return dict(table[(ds, nearest)]), source
