"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search.

Minimises the margin z_y - max_{i!=y} z_i with random square-shaped updates whose side
shrinks with the schedule p(i) (p_init = 0.8 halved at queries 10, 50, 200, 500, 1000,
2000, 4000, 6000, 8000). As in the AutoAttack code (`resc_schedule=False`): one window
position and one sign per channel per step, shared by the whole batch; Linf starts from
random vertical stripes at +-eps, L2 from a grid of signed "double-centre" squares.
Random numbers are drawn on the CPU in the official order, after `torch.manual_seed(seed)`.
"""

import math

import torch

from aaer.attacks.apgd import (bview, check_inputs, check_norm_eps, check_positive_int,
                               logits_of, lp_norm, lp_normalize, seeded)
from aaer.errors import UsageError

_P_BREAKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _rand_sign(shape):
    return torch.sign(2 * torch.rand(shape) - 1)


def _rand_int(high):
    """Uniform integer in [0, high) (0 when high == 0), the official way."""
    return int((high * torch.rand([1])).long())


def _l2_unit(d):
    return d / (d.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12)


def _rings(rows, cols):
    """Concentric rectangles around the centre with weight 1/(r+1)^2, unit L2 norm."""
    m = torch.zeros(rows, cols)
    r0, c0 = rows // 2, cols // 2
    for r in range(max(r0, c0) + 1):
        m[max(r0 - r, 0):min(r0 + r + 1, rows), max(c0 - r, 0):min(c0 + r + 1, cols)] \
            += 1.0 / (r + 1) ** 2
    return m / m.pow(2).sum().sqrt()


def _l2_square(s):
    """Window of the L2 attack: a positive and a negative half, randomly transposed."""
    top = s // 2
    m = torch.cat((_rings(top, s), -_rings(s - top, s)), dim=0)
    m = m / m.pow(2).sum().sqrt()
    return m.t() if torch.rand([1]) > 0.5 else m


class Square:
    """Untargeted Square Attack on the margin loss (Linf or L2)."""

    name = "square"

    def __init__(self, model, norm="Linf", eps=8 / 255, n_queries=5000, n_restarts=1,
                 p_init=.8, seed=0, rescale_schedule=False, device=None):
        self.model = model
        self.norm = norm
        self.eps = check_norm_eps(norm, eps)
        self.n_queries = check_positive_int("n_queries", n_queries)
        self.n_restarts = check_positive_int("n_restarts", n_restarts)
        if not 0 < p_init <= 1:
            raise UsageError(f"p_init={p_init!r} must be in (0, 1]")
        self.p_init = p_init
        self.seed = seed
        self.rescale_schedule = rescale_schedule
        self.device = device

    def _p(self, i):
        if self.rescale_schedule:
            i = int(i / self.n_queries * 10000)
        return self.p_init / 2 ** sum(i > b for b in _P_BREAKS)

    def _margin(self, x, y):
        z = logits_of(self.model, x)
        rows = torch.arange(z.shape[0], device=z.device)
        z_y = z[rows, y].clone()
        z[rows, y] = -float("inf")
        return z_y - z.amax(1)

    def _side(self, i, c, h, w, n_features):
        s = int(round(math.sqrt(self._p(i) * n_features / c)))
        if self.norm == "Linf":
            s = max(s, 1)
        else:
            s = max(s, 3)
            s += 1 - s % 2  # odd side
        return min(s, h, w)

    def _init(self, x):
        n, c, h, w = x.shape
        if self.norm == "Linf":
            return (x + self.eps * _rand_sign([n, c, 1, w]).to(x.device)).clamp(0, 1)
        s = h // 5
        if s == 0:
            raise UsageError(f"Square L2 needs images of at least 5x5 pixels, got {h}x{w}")
        start = (h - 5 * s) // 2
        delta = torch.zeros_like(x)
        # a grid of s x s tiles; tiles that would cross the border (images where h//s > 5
        # leaves no room) are skipped instead of truncated
        for vh in range(start, start + s * (h // s), s):
            for vw in range(start, start + s * (w // s), s):
                m = _l2_square(s).to(x.device)
                sign = _rand_sign([n, c, 1, 1]).to(x.device)
                if vh + s <= h and vw + s <= w:
                    delta[:, :, vh:vh + s, vw:vw + s] += m * sign
        return (x + lp_normalize(delta, "L2") * self.eps).clamp(0, 1)

    def _propose_linf(self, x, x_best, s):
        c, h, w = x.shape[1:]
        vh, vw = _rand_int(h - s), _rand_int(w - s)
        delta = torch.zeros(c, h, w, device=x.device)
        delta[:, vh:vh + s, vw:vw + s] = 2 * self.eps * _rand_sign([c, 1, 1]).to(x.device)
        return torch.min(torch.max(x_best + delta, x - self.eps), x + self.eps).clamp(0, 1)

    def _propose_l2(self, x, x_best, s):
        n, c, h, w = x.shape
        delta = x_best - x
        vh, vw = _rand_int(h - s), _rand_int(w - s)
        vh2, vw2 = _rand_int(h - s), _rand_int(w - s)
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        both = torch.zeros_like(x)
        both[win1] = 1.
        both[win2] = 1.
        # mass already in the two windows plus the budget left, spread over the channels
        mass_windows = (delta * both).pow(2).sum(dim=(-2, -1), keepdim=True)
        budget_left = (self.eps ** 2 - lp_norm(delta, "L2").pow(2)).clamp_min(0)
        new = _l2_square(s).to(x.device) * _rand_sign([n, c, 1, 1]).to(x.device)
        new = _l2_unit(new + _l2_unit(delta[win1]))
        new = new * (bview(budget_left, x) / c + mass_windows).sqrt()
        delta[win2] = 0.
        delta[win1] = new
        return (x + lp_normalize(delta, "L2") * self.eps).clamp(0, 1)

    def _run(self, x, y):
        n, c, h, w = x.shape
        x_best = self._init(x)
        margin = self._margin(x_best, y)
        if (margin < 0).all():
            return x_best
        propose = self._propose_linf if self.norm == "Linf" else self._propose_l2
        for i in range(self.n_queries):
            idx = (margin > 0).nonzero().flatten()
            x_curr, x_best_curr = x[idx], x_best[idx]
            x_new = propose(x_curr, x_best_curr, self._side(i, c, h, w, c * h * w))
            m_new = self._margin(x_new, y[idx])
            # keep the proposal if it lowers the margin (loss = margin, so a
            # misclassified proposal always lowers it)
            better = m_new < margin[idx]
            margin[idx] = torch.where(better, m_new, margin[idx])
            x_best[idx] = torch.where(bview(better, x_new), x_new, x_best_curr)
            if (margin <= 0).all():
                break
        return x_best

    def perturb(self, x, y):
        """Adversarial examples within eps for (x, y); others are returned unchanged."""
        x_in = x
        x, y = check_inputs(x, y)
        if x.dim() != 4:
            raise ValueError(f"Square needs image batches (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        device = torch.device(self.device) if self.device is not None else x.device
        x, y = x.to(device), y.to(device)
        adv = x.clone()
        with seeded(self.seed, device), torch.no_grad():
            robust = logits_of(self.model, x).argmax(1) == y
            for _ in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                x_found = self._run(x[idx], y[idx])
                fooled = logits_of(self.model, x_found).argmax(1) != y[idx]
                robust[idx[fooled]] = False
                adv[idx[fooled]] = x_found[fooled]
        return adv.to(x_in.device)
