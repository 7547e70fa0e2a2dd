"""FAB (Croce & Hein, ICML 2020): minimal-norm attack by adaptive boundary projections.

Each step linearises the decision boundary at the iterate x1 (towards the class with the
nearest linearised boundary, or towards a fixed target for FAB-T), projects both x1 and
the original x0 onto that hyperplane intersected with the [0,1] box, and moves to the
convex combination (weight alpha = |d1|/(|d1|+|d2|) capped at alpha_max on the x0
projection) of the two overshot projections (factor eta). After a success the iterate is
pulled back towards x0 by beta. A point counts as fooled only if its best adversarial
example has norm <= eps. Semantics and defaults follow the official AutoAttack code
(alpha_max 0.1, eta 1.05, beta 0.9, 100 iterations, targets = classes ranked 2..10,
random start at eps/2 only from the second restart on).

The projection onto {w.x = b} n [0,1]^D (the paper only states the problem) is the official
fab_projections.py (fra31/auto-attack), its arithmetic done in the same order so that the
iterates are the official ones bit for bit (float32 and float64, measured side by side):
- w is flipped so that lowering w.x closes the gap |w.t - b|; a point on the plane counts
  as above it.
- L-inf: each coordinate moves by min(lam, room) towards the face away from w. The rooms are
  sorted (largest first) and the piece of the piecewise-linear drop that brackets the gap is
  found by a fixed bisection of ceil(log2 D) halvings; the drop of the saturated rooms is
  the corner's total minus a cumulative sum. If lam is below the smallest room the step is
  +-lam unclipped; if the gap is >= the corner's reach the step is the corner; lam >= 0,
  its slope divided as it is (no floor however small w); zero weights never move.
- L2: d = -w min(mu, r), r = room / |w| for |w| >= 1e-8; smaller weights never reach the
  box (r = 1e12) but their w^2 still counts in mu's equation, and only |w| > 1e-8 moves.
  mu = gap / sum w^2 below the smallest break (checked before "out of reach", which counts
  only the moving weights' corner); else the bracketing break by the same bisection, the
  free weight past it being the total minus a cumulative sum, and where that is 0 (rounding
  can cancel it) mu = 0: no step.
- Nothing is clipped at the end: the L2 corner (room / |w|) |w| can leave the box by an ulp,
  and FAB clamps every iterate to [0,1].
"""

import math

import torch

from aaer.attacks.apgd import (bview, check_inputs, check_norm_eps, check_positive_int,
                               logits_of, lp_norm, lp_normalize, seeded)
from aaer.attacks.checks import fit_n_target_classes
from aaer.errors import UsageError


def _last_above(values, target):
    """Per row, the k in [0, D-2] with values[k] > target >= values[k+1] (values falling in k).

    A bisection of fixed length ceil(log2 D) over [0, D-1], as the official code runs it:
    where rounding makes values not quite monotone (tied breakpoints), the k it lands on,
    and so the bracketing piece, is the official one.
    """
    n, dim = values.shape
    lo = torch.zeros(n, 1, dtype=torch.long, device=values.device)
    hi = torch.full_like(lo, dim - 1)
    for _ in range(math.ceil(math.log2(dim))):
        mid = (lo + hi) // 2
        above = values.gather(1, mid) > target[:, None]
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return lo


def _project_linf(t, w, b):
    """Minimal L-inf d with w.(t+d) = b and t+d in [0,1]^D (the box corner if out of reach).

    After flipping w so that the gap tau = |w.t - b| is closed by lowering w.x, coordinate
    i moves by lam towards the box face away from w (room_i = 1-t_i if w_i < 0 else t_i),
    saturating at its room; the drop sum_i |w_i| min(lam, room_i) is piecewise linear with
    breaks at the rooms.
    """
    c = (w * t).sum(1) - b
    w = w * torch.where(c >= 0, 1, -1)[:, None]
    tau = c.abs()
    up = w < 0
    aw = w.abs()
    room = torch.where(up, 1 - t, t)
    reach = (aw * room).sum(1)                       # the drop at the corner
    order = room.argsort(dim=1).flip(1)              # rooms, largest first
    room_s = room.gather(1, order)
    free = aw.gather(1, order).cumsum(1)             # slope while rooms 0..k are unsaturated
    saturated = reach[:, None] - (aw * room).gather(1, order).cumsum(1)   # official order
    drop = saturated + free * room_s                 # the drop at lam = room_s[k]
    all_free = drop[:, -1] > tau                     # lam below every room
    bracket = (reach > tau) & ~all_free
    k = torch.where(all_free[:, None], room.shape[1] - 1, _last_above(drop, tau))
    lam = ((tau - saturated.gather(1, k)[:, 0]) / free.gather(1, k)[:, 0]).clamp_min(0)[:, None]
    sign = torch.where(up, 1, -1)
    d = torch.where(all_free[:, None], sign * lam,
                    sign * torch.where(bracket[:, None], torch.minimum(lam, room), room))
    return d * (w != 0)


def _project_l2(t, w, b):
    """Minimal L2 d with w.(t+d) = b and t+d in [0,1]^D (the box corner if out of reach).

    KKT: after flipping w so the gap tau = |w.t - b| is closed by lowering w.x,
    d_i = -w_i min(mu, r_i) with r_i = room_i / |w_i| the multiplier at which coordinate i
    hits the box; the drop sum_i w_i^2 min(mu, r_i) is piecewise linear with breaks at r.
    """
    c = (w * t).sum(1) - b
    flip = torch.where(c >= 0, 1, -1)
    w, tau = w * flip[:, None], c * flip
    tiny = w.abs() < 1e-8
    breaks = torch.where(tiny, 1e12, torch.maximum(t / w, (t - 1) / w))
    r_s, order = breaks.sort(dim=1)
    r_next = torch.nn.functional.pad(r_s[:, 1:], (0, 1))
    r_s, r_next = r_s.masked_fill(r_s == 1e12, 0), r_next.masked_fill(r_next == 1e12, 0)
    q = (w ** 2).gather(1, order)
    total = q.sum(1, keepdim=True)
    after = total - q.cumsum(1)                      # slope past break k
    drop0 = total * r_s[:, :1]
    drop = torch.cat((drop0, drop0 + ((r_next - r_s) * after).cumsum(1)[:, :-1]), 1)
    corner = -(breaks * w) * (w.abs() > 1e-8)
    all_free = tau < drop[:, 0]                      # mu below every break
    out_of_reach = tau + (corner * w).sum(1) > 0
    k = _last_above(-drop, -tau)
    after_k = after.gather(1, k)
    mu = (tau[:, None] - drop.gather(1, k)) / after_k + r_s.gather(1, k)
    mu = torch.where(all_free[:, None], (tau / total[:, 0])[:, None],
                     torch.where(after_k == 0, 0., mu))
    d = torch.where(all_free[:, None] | ~(out_of_reach[:, None] | (mu > breaks)),
                    -(mu * w), corner)
    return d * (w.abs() > 1e-8)


def project_hyperplane_box(t, w, b, norm):
    """Minimal-norm d with w.(t+d) = b and 0 <= t+d <= 1, rows independent, as the official
    fab_projections.py computes it (see the module docstring)."""
    return _project_linf(t, w, b) if norm == "Linf" else _project_l2(t, w, b)


class FAB:
    """Untargeted FAB (K backward passes per step for the Jacobian); see FABT for targeted."""

    name = "fab"

    def __init__(self, model, norm="Linf", eps=8 / 255, n_iter=100, n_restarts=1,
                 alpha_max=0.1, eta=1.05, beta=0.9, targeted=False, n_target_classes=9,
                 seed=0, device=None):
        self.model = model
        self.norm = norm
        self.eps = check_norm_eps(norm, eps)
        self.n_iter = check_positive_int("n_iter", n_iter)
        self.n_restarts = check_positive_int("n_restarts", n_restarts)
        self.n_target_classes = check_positive_int("n_target_classes", n_target_classes)
        for name, v, lo, hi in (("alpha_max", alpha_max, 0, 1), ("beta", beta, 0, 1)):
            if not lo <= v <= hi:
                raise UsageError(f"{name}={v!r} must be in [{lo}, {hi}]")
        if eta < 1:
            raise UsageError(f"eta={eta!r} (overshoot) must be >= 1")
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta
        self.targeted = targeted
        self.seed = seed
        self.device = device

    def _boundary(self, x1, y, y_target):
        """(f, grad f) of the boundary to cross: f = z_other - z_y (< 0 while correct)."""
        x_req = x1.clone().requires_grad_()
        with torch.enable_grad():
            z = logits_of(self.model, x_req)
            rows = torch.arange(z.shape[0], device=z.device)
            if y_target is not None:
                f = z[rows, y_target] - z[rows, y]
                g = torch.autograd.grad(f.sum(), x_req)[0]
                return f.detach(), g.detach()
            jac = torch.stack([torch.autograd.grad(z[:, k].sum(), x_req, retain_graph=True)[0]
                               for k in range(z.shape[1])], dim=1)
        z = z.detach()
        df = z - z[rows, y][:, None]
        dg = (jac - jac[rows, y][:, None]).flatten(2)
        df[rows, y] = 1e10
        dual = dg.abs().sum(2) if self.norm == "Linf" else (dg ** 2).sum(2).sqrt()
        k = (df.abs() / (dual + 1e-12)).argmin(1)
        return df[rows, k], dg[rows, k].reshape(x1.shape)

    def _run(self, x0, y, y_target=None, rand_start=False):
        """One FAB run; returns (best adversarial points, their norms; inf where none)."""
        n = x0.shape[0]
        x1 = x0.clone()
        if rand_start:
            t = 2 * torch.rand(x0.shape) - 1 if self.norm == "Linf" else torch.randn(x0.shape)
            x1 = (x0 + 0.5 * self.eps * lp_normalize(t.to(x0.device), self.norm)).clamp(0, 1)
        x_best = x0.clone()
        best = torch.full((n,), 1e10, device=x0.device)
        flat0 = x0.reshape(n, -1)
        for _ in range(self.n_iter):
            f, g = self._boundary(x1, y, y_target)
            w = g.reshape(n, -1)
            b = (w * x1.reshape(n, -1)).sum(1) - f
            d = project_hyperplane_box(torch.cat((x1.reshape(n, -1), flat0)),
                                       torch.cat((w, w)), torch.cat((b, b)), self.norm)
            a = lp_norm(d, self.norm).clamp_min(1e-8)
            alpha = (a[:n] / (a[:n] + a[n:])).clamp(0, self.alpha_max)
            d1, d2 = d[:n].reshape(x0.shape), d[n:].reshape(x0.shape)
            x1 = ((x1 + self.eta * d1) * bview(1 - alpha, x0)
                  + (x0 + self.eta * d2) * bview(alpha, x0)).clamp(0, 1)

            fooled = logits_of(self.model, x1).argmax(1) != y
            if fooled.any():
                dist = lp_norm(x1 - x0, self.norm)
                closer = fooled & (dist < best)
                x_best[closer] = x1[closer]
                best[closer] = dist[closer]
                x1[fooled] = x0[fooled] + (x1[fooled] - x0[fooled]) * self.beta
        return x_best, torch.where(best < 1e10, best, torch.full_like(best, float("inf")))

    def _attempt(self, x, y, robust, adv, y_target_rank, restart):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            return
        x0, y0 = x[idx], y[idx]
        y_target = None
        if y_target_rank is not None:
            y_target = logits_of(self.model, x0).sort(dim=1)[1][:, -y_target_rank]
        x_found, _ = self._run(x0, y0, y_target, rand_start=restart > 0)
        # success = misclassified AND within eps (FAB's iterates may exceed eps)
        fooled = (logits_of(self.model, x_found).argmax(1) != y0) \
            & (lp_norm(x_found - x0, self.norm) <= self.eps)
        robust[idx[fooled]] = False
        adv[idx[fooled]] = x_found[fooled]

    def perturb(self, x, y):
        """Adversarial examples within eps for (x, y); others are returned unchanged."""
        x_in = x
        x, y = check_inputs(x, y)
        device = torch.device(self.device) if self.device is not None else x.device
        x, y = x.to(device), y.to(device)
        adv = x.clone()
        with seeded(self.seed, device), torch.no_grad():
            logits = logits_of(self.model, x)
            robust = logits.argmax(1) == y
            if not self.targeted:
                for restart in range(self.n_restarts):
                    self._attempt(x, y, robust, adv, None, restart)
            else:
                n_targets = fit_n_target_classes(self.n_target_classes, logits.shape[1], "FAB-T")
                for rank in range(2, n_targets + 2):
                    for restart in range(self.n_restarts):
                        self._attempt(x, y, robust, adv, rank, restart)
        return adv.to(x_in.device)


class FABT(FAB):
    """FAB-T: FAB towards each of the `n_target_classes` highest-ranked wrong classes."""

    name = "fab-t"

    def __init__(self, model, norm="Linf", eps=8 / 255, n_iter=100, n_restarts=1,
                 n_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9, seed=0, device=None):
        super().__init__(model, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts,
                         alpha_max=alpha_max, eta=eta, beta=beta, targeted=True,
                         n_target_classes=n_target_classes, seed=seed, device=device)
