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
"""

import torch

from aaer.attacks.apgd import (bview, check_inputs, check_norm_eps, check_positive_int,
                               logits_of, lp_norm, lp_normalize, seeded)
from aaer.attacks.checks import fit_n_target_classes
from aaer.errors import UsageError


def _saturating_root(rooms, weights, target):
    """Smallest lam >= 0 with sum_i weights_i * min(lam, rooms_i) = target (per row).

    Rows where even lam = inf falls short get lam = inf (the caller takes the corner).
    """
    r, order = rooms.sort(dim=1)
    w = weights.gather(1, order)
    saturated = torch.cumsum(w * r, dim=1) - w * r           # sum_{j<k} w_j r_j
    free = w.flip(1).cumsum(1).flip(1)                        # sum_{j>=k} w_j
    g_at_breaks = saturated + r * free                        # g(r_k), nondecreasing in k
    k = (g_at_breaks < target[:, None]).sum(1, keepdim=True)
    feasible = k[:, 0] < r.shape[1]
    k = k.clamp(max=r.shape[1] - 1)
    lam = (target - saturated.gather(1, k)[:, 0]) / free.gather(1, k)[:, 0].clamp_min(1e-12)
    return torch.where(feasible, lam.clamp_min(0), torch.full_like(lam, float("inf")))


def project_hyperplane_box(t, w, b, norm):
    """Minimal-norm d with w.(t+d) = b and 0 <= t+d <= 1, rows independent.

    Moving each coordinate towards the hyperplane changes w.d by |w_i| per unit (Linf:
    d_i = sign * min(lam, room_i)) or, for L2, by KKT d_i = sign * |w_i| min(mu, room_i/|w_i|);
    both are one saturating-sum root. If the box cannot reach the hyperplane, the box
    corner closest to it is returned.
    """
    c = b - (w * t).sum(1)
    sigma = torch.sign(c)[:, None] * torch.sign(w)
    room = torch.where(sigma > 0, 1 - t, t)
    if norm == "Linf":
        active = w != 0
        weights = w.abs() * active
        lam = _saturating_root(room, weights, c.abs())
        d = torch.min(lam[:, None], room)
    else:
        active = w.abs() >= 1e-8
        aw = torch.where(active, w.abs(), torch.ones_like(w))
        breaks = torch.where(active, room / aw, torch.full_like(w, 1e12))
        lam = _saturating_root(breaks, w.pow(2) * active, c.abs())
        d = aw * torch.min(lam[:, None], breaks)
    return sigma * d * active


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
