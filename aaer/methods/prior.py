"""What the prior-guided single-step methods share (FGSM-PGI, FGSM-MEP-CS, FGSM-PCO).

These methods start each example's attack from a perturbation kept for that example from
its last visit (the "prior"), and train on "factor"-smoothed labels. Their official codes
(jiaxiaojunQAQ/FGSM-PGI ``FGSM_MEP.py``, Mengnan-Zhao-Happy/ConvergeSmooth
``FGSM_MEP_CS.py``, HandingWangXDGroup/FGSM-PCO ``FGSM-PCO.py``) write the same pieces
each time; here they are once:

- ``factor_targets``: t_y = factor on the true class, (1 - factor) / (C - 1) on every
  other class. This is NOT torch's ``label_smoothing=s`` (target 1 - s + s/C, s/C): the
  two agree only for s = C (1 - factor) / (C - 1) (0.444 at factor 0.6, C = 10).
- ``smoothed_ce``: mean over examples of sum_c -t_c log softmax(z)_c.
- ``clamp_to_box``: clamp(delta, -x, 1 - x), the official form of keeping x + delta in
  [0, 1] (it leaves delta bit-identical where no clip applies; ``clip_to_box`` of base.py,
  (x + delta).clamp(0, 1) - x, rounds).
- ``read_prior``: the stored prior of each example of the batch, or a fresh one for
  examples not written since the last reset. The official codes refill the whole buffer
  at a reset epoch with clamp(alpha * sign(U(-eps, eps)), -eps, eps), i.e. +-min(alpha,
  eps) with random signs. Here each example gets those values when it is first read after
  the reset (a per-example "written in epoch" stamp, checkpointed with the prior): the
  same values in distribution, drawn only for the examples of the batch, so under data
  parallelism each process draws for its own examples and every copy of the memory stays
  equal.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods.base import MemorySlot, uniform_noise

Tensor = torch.Tensor

# the memory slot holding the epoch in which each example's prior was last written
STAMP = "written_epoch"
# the initial prior: the official --delta-init choices that run (random signs, or zero)
PRIOR_INITS = ("random", "zero")


def check_init(delta_init) -> str:
    if delta_init not in PRIOR_INITS:
        raise UsageError(f"invalid delta_init {delta_init!r}: must be one of "
                         f"{', '.join(PRIOR_INITS)} (the initial prior: +-min(alpha, eps) "
                         "random signs, or 0)")
    return delta_init


def factor_targets(y: Tensor, num_classes: int, factor: float) -> Tensor:
    """Soft targets [B, C]: ``factor`` on the true class, (1 - factor)/(C - 1) elsewhere.

    Computed in float64 and rounded to float32, as the official numpy code does."""
    if num_classes < 2:
        raise ValueError(f"factor label smoothing needs at least 2 classes, got {num_classes}")
    off = (1.0 - factor) / (num_classes - 1)
    t = torch.full((y.shape[0], num_classes), off, dtype=torch.float64, device=y.device)
    t.scatter_(1, y.view(-1, 1), factor)
    return t.float()


def smoothed_ce(z: Tensor, t: Tensor) -> Tensor:
    """mean_i sum_c -t_ic log softmax(z_i)_c (the official ``LabelSmoothLoss``)."""
    return (-t * F.log_softmax(z.float(), dim=-1)).sum(dim=-1).mean()


def logit_mse(a: Tensor, b: Tensor) -> Tensor:
    """(1 / (B C)) sum (a - b)^2: torch's ``MSELoss`` default, the mean over the batch AND
    the classes (the poster's ||.||_2^2 per example divided by C)."""
    return F.mse_loss(a.float(), b.float())


def clamp_to_box(x: Tensor, delta: Tensor) -> Tensor:
    """clamp(delta, -x, 1 - x): x + delta in [0, 1]."""
    return torch.max(torch.min(delta, 1.0 - x), -x)


def sign_step(eta: Tensor, direction: Tensor, x: Tensor, eps: float, step: float) -> Tensor:
    """clamp_to_box(clamp(eta + step * sign(direction), -eps, eps)): the official update of
    the prior and of the training perturbation."""
    return clamp_to_box(x, (eta + step * direction.sign()).clamp(-eps, eps))


def prior_slots(example_shape: tuple, momentum: bool = False) -> dict[str, MemorySlot]:
    """The per-example memory of a prior (and of its momentum, for MEP)."""
    slots = {"prior": MemorySlot(tuple(example_shape)),
             STAMP: MemorySlot((), torch.int64, -1.0)}
    if momentum:
        slots["momentum"] = MemorySlot(tuple(example_shape))
    return slots


def reset_epoch(epoch: int, every: int | None) -> int:
    """The epoch of the last reset at or before ``epoch``: resets at 0, every, 2 every...
    (0-based, as ``epoch % epochs_reset == 0`` in the official loops); ``every`` None: the
    prior is initialised once, at epoch 0, and never reset (FGSM-PCO)."""
    return 0 if every is None else epoch - epoch % every


def read_prior(ctx, x: Tensor, eps: float, alpha: float, every: int | None,
               momentum: bool = False, init: str = "random"):
    """(eta, m, fresh) for the batch: the stored prior and momentum of each example, or for
    an example not written since the last reset the initial prior +-min(alpha, eps) (random
    signs, as the official clamp(alpha sign(U(-eps, eps)), -eps, eps)) and zero momentum.
    ``fresh`` is the [B] mask of the examples that got a new prior; m is None without
    momentum. eta is not clipped to the image box (the official codes do not clip it).
    ``init="zero"``: the initial prior is 0 (the official ``--delta-init zero``)."""
    mem, i = ctx.memory, ctx.index
    since = reset_epoch(ctx.epoch, every)
    fresh = mem.read(STAMP, i) < since
    f = fresh.view(-1, *([1] * (x.dim() - 1)))
    start = torch.zeros_like(x) if init == "zero" else \
        uniform_noise(x, eps).sign().mul_(min(alpha, eps))
    eta = torch.where(f, start, mem.read("prior", i).to(x.dtype))
    m = None
    if momentum:
        m = mem.read("momentum", i).to(x.dtype)
        m = torch.where(f, torch.zeros_like(m), m)
    return eta, m, fresh


def write_prior(ctx, prior: Tensor, m: Tensor | None = None) -> None:
    """Store each example's next prior (and momentum), stamped with this epoch."""
    mem, i = ctx.memory, ctx.index
    mem.write("prior", i, prior)
    if m is not None:
        mem.write("momentum", i, m)
    mem.write(STAMP, i, torch.full_like(i, ctx.epoch))


def l1_normalised(g: Tensor, batch_sum=None) -> Tensor:
    """g / ||g||_1 with the L1 norm over the WHOLE batch (``torch.norm(g, p=1)`` of the
    official code: one scalar, not one per example). Under data parallelism the norm is the
    global batch's: each process's g is the gradient of its own batch mean, so it is put on
    the global scale (times its batch size) before the norms are summed. A zero gradient
    gives a zero result (the official code would divide 0 by 0)."""
    if batch_sum is None:
        return g / torch.linalg.vector_norm(g, ord=1).clamp_min(1e-30)
    b = g.shape[0]
    total = batch_sum(torch.linalg.vector_norm(g, ord=1) * b)
    return g * b / total.clamp_min(1e-30)


def true_class_probability(z: Tensor, y: Tensor) -> Tensor:
    """softmax(z)_y per example, [B] (with its graph)."""
    return torch.softmax(z.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
