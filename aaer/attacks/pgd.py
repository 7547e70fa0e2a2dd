"""PGD with random restarts and FGSM, with the fast-AT lineage's semantics (SPEC §5), in
L-inf or L2 (SPEC §10).

PGD-k-r: r restarts, each from a uniform random point of the eps-ball (clipped to
[0,1]), k steps of size alpha along sign(grad) (L-inf) or grad / ||grad||_2 (L2), each
projected back onto the ball and the box, the model in eval mode. Within a restart
only examples still classified correctly are moved, so a broken example stays broken.
Per example the restart with the largest loss is kept.

How restarts combine (``selection``):
- ``"worst"`` (default): an example counts as broken if *any* restart broke it; among
  breaking restarts (or, if none broke it, among all) the largest loss is kept. With
  ``skip_broken=True`` each restart runs only on examples no earlier restart has broken:
  the same robust accuracy as running every restart on every example, for less work.
- ``"max-loss"``: the lineage's exact rule, the largest-loss restart wins even when a
  lower-loss restart had broken the example (so it can, rarely, report an example as
  robust that one restart broke). Every restart runs on every example.

Within a restart a misclassified example is frozen, so each step runs the forward and
backward pass on the still-correct examples only (in eval mode every example's logits
depend on that example alone, so this equals stepping the whole batch and masking).
The input gradient is that of the *summed* per-example cross-entropy: its sign (and its
per-example direction) is that of the mean's, without the 1/batch scaling that can
underflow to a zero gradient.

Random starts: every restart's start is drawn for the whole batch, in order, whatever
``skip_broken`` skips and also after every example is broken, so a batch always takes
``restarts`` draws of its own shape from the generator: a process that evaluates only
some batches can skip the others' draws exactly (aaer.evaluation's sharding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.threat import check_norm

Tensor = torch.Tensor


def _ce_grad(model, x_adv: Tensor, y: Tensor):
    x_adv = x_adv.detach().requires_grad_(True)
    z = model(x_adv)
    loss = F.cross_entropy(z.float(), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x_adv)
    return z.detach(), g


def _unit(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return g.sign()
    n = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return g / n.clamp_min(1e-12)


def _project(d: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return d.clamp(-eps, eps)
    n = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)


def ball_start(shape, eps: float, norm: str, generator, device, dtype) -> Tensor:
    """A uniform point of the ``norm`` ball of radius eps for each example."""
    gen_device = device if generator is None else generator.device
    if norm == "linf":
        noise = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)
        return ((2 * noise - 1) * eps).to(device)
    g = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    u = torch.rand(shape[0], generator=generator, device=gen_device, dtype=dtype)
    r = eps * u.pow(1.0 / math.prod(shape[1:]))
    return (_unit(g, "l2") * r.view(-1, *([1] * (len(shape) - 1)))).to(device)


def pgd_restart(model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
                delta: Tensor, norm: str = "linf") -> Tensor:
    """One restart from ``delta``: returns the final perturbation.

    Each step moves only the examples still classified correctly; ``live`` holds their
    indices and shrinks as examples break, so broken ones cost no more work.
    """
    delta = (torch.clamp(x + delta, 0, 1) - x).detach().clone()
    live = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        x_l, d_l = x[live], delta[live]
        z, g = _ce_grad(model, x_l + d_l, y[live])
        ok = z.argmax(1) == y[live]
        if not bool(ok.any()):
            break
        live, x_l = live[ok], x_l[ok]
        step = _project(d_l[ok] + alpha * _unit(g[ok], norm), eps, norm)
        delta[live] = torch.clamp(x_l + step, 0, 1) - x_l
    return delta


SELECTIONS = ("worst", "max-loss")


def pgd(model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int = 50,
        restarts: int = 10, skip_broken: bool = True, random_start: bool = True,
        generator: torch.Generator | None = None, selection: str = "worst",
        norm: str = "linf") -> Tensor:
    """Perturbation chosen over ``restarts`` PGD runs (see ``selection``); returns x_adv.

    The random start of every restart is drawn for the whole batch, whatever
    ``skip_broken`` skips, so every setting sees the same noise for each example.
    """
    check_norm(norm)
    if selection not in SELECTIONS:
        raise UsageError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "max-loss":
        skip_broken = False
    n = x.shape[0]
    best_delta = torch.zeros_like(x)
    best_loss = torch.full((n,), -float("inf"), device=x.device)
    broken = torch.zeros(n, dtype=torch.bool, device=x.device)
    everyone = torch.arange(n, device=x.device)
    for _ in range(restarts):
        if random_start:
            start = ball_start(x.shape, eps, norm, generator, x.device, x.dtype)
        else:
            start = torch.zeros_like(x)
        idx = (~broken).nonzero().squeeze(1) if skip_broken else everyone
        if idx.numel() == 0:
            continue                 # still draw the remaining restarts' starts (above)
        d = pgd_restart(model, x[idx], y[idx], eps, alpha, steps, start[idx], norm)
        with torch.no_grad():
            z = model(x[idx] + d)
            loss = F.cross_entropy(z.float(), y[idx], reduction="none")
            wrong = z.argmax(1) != y[idx]
        more_loss = loss >= best_loss[idx]
        if selection == "max-loss":
            better = more_loss
        else:
            was = broken[idx]
            better = (wrong & ~was) | ((wrong == was) & more_loss)
        sel = idx[better]
        best_delta[sel] = d[better]
        best_loss[sel] = loss[better]
        broken[idx] |= wrong
    return (x + best_delta).clamp(0, 1).detach()


def fgsm(model, x: Tensor, y: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """The lineage's FGSM evaluation: zero start, one step of length eps (L-inf: eps *
    sign(grad); L2: eps * grad / ||grad||_2)."""
    _, g = _ce_grad(model, x, y)
    return (x + eps * _unit(g, norm)).clamp(0, 1).detach()


def skip_draws(shape, restarts: int, norm: str, generator, dtype=torch.float32) -> None:
    """Advance ``generator`` past the random starts ``pgd`` draws for one batch of
    ``shape`` (a batch another process evaluates)."""
    for _ in range(restarts):
        ball_start(shape, 1.0, norm, generator, generator.device, dtype)
