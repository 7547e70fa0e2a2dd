"""L-inf PGD with random restarts and FGSM, with the fast-AT lineage's semantics (SPEC §5).

PGD-k-r: r restarts, each from a uniform random point of the eps-ball (clipped to
[0,1]), k signed-gradient steps of size alpha, the model in eval mode. Within a restart
only examples still classified correctly are moved, so a broken example stays broken.
Per example the restart with the largest loss is kept.

``skip_broken=True`` (default) runs each restart only on the examples no earlier restart
has broken; the examples it skips are already counted as broken, so the robust accuracy
is the same for less work. (The lineage's max-loss rule can, rarely, prefer a later
restart whose higher-loss point is classified correctly again; we count an example
robust only if *no* restart broke it, which is never weaker.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _ce_grad(model, x_adv: Tensor, y: Tensor):
    x_adv = x_adv.detach().requires_grad_(True)
    z = model(x_adv)
    loss = F.cross_entropy(z.float(), y)
    (g,) = torch.autograd.grad(loss, x_adv)
    return z.detach(), g


def pgd_restart(model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
                delta: Tensor) -> Tensor:
    """One restart from ``delta``: returns the final perturbation."""
    delta = (torch.clamp(x + delta, 0, 1) - x).detach()
    for _ in range(steps):
        z, g = _ce_grad(model, x + delta, y)
        live = (z.argmax(1) == y)
        if not bool(live.any()):
            break
        step = (delta + alpha * g.sign()).clamp(-eps, eps)
        step = torch.clamp(x + step, 0, 1) - x
        delta = torch.where(live.view(-1, *([1] * (x.dim() - 1))), step, delta)
    return delta.detach()


def pgd(model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int = 50,
        restarts: int = 10, skip_broken: bool = True, random_start: bool = True,
        generator: torch.Generator | None = None) -> Tensor:
    """Worst-case perturbation over ``restarts`` PGD runs; returns x_adv.

    The random start of every restart is drawn for the whole batch, whatever
    ``skip_broken`` skips, so both settings see the same noise for each example.
    """
    best_delta = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        if random_start:
            gen_device = x.device if generator is None else generator.device
            noise = torch.rand(x.shape, generator=generator, device=gen_device,
                               dtype=x.dtype).to(x.device)
            start = (2 * noise - 1) * eps
        else:
            start = torch.zeros_like(x)
        idx = (~broken).nonzero().squeeze(1) if skip_broken else torch.arange(x.shape[0], device=x.device)
        if idx.numel() == 0:
            break
        d = pgd_restart(model, x[idx], y[idx], eps, alpha, steps, start[idx])
        with torch.no_grad():
            z = model(x[idx] + d)
            loss = F.cross_entropy(z.float(), y[idx], reduction="none")
            wrong = z.argmax(1) != y[idx]
        better = loss >= best_loss[idx]
        if skip_broken:
            better = better | wrong          # the breaking restart wins
        sel = idx[better]
        best_delta[sel] = d[better]
        best_loss[idx] = torch.maximum(best_loss[idx], loss)
        broken[idx] |= wrong
    return (x + best_delta).clamp(0, 1).detach()


def fgsm(model, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The lineage's FGSM evaluation: zero start, one step of size eps."""
    _, g = _ce_grad(model, x, y)
    return (x + eps * g.sign()).clamp(0, 1).detach()
