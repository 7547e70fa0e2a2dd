"""Auto-PGD (Croce & Hein, ICML 2020): APGD on CE / DLR, and APGD-T on the targeted DLR.

Semantics follow the official AutoAttack code (fra31/auto-attack): uniform start on the
eps-sphere, step size 2*eps halved at checkpoints (first after 22% of the iterations,
then windows shrinking by 3% down to 6%) when the loss oscillated (fewer than rho*k
increases in the window) or the best loss did not improve since an unreduced check,
restarting from the best point; momentum 0.75; only points still classified correctly
are attacked in each restart / target class; `torch.manual_seed(seed)` at the start of
each `perturb` (inside `fork_rng`, so the caller's random state is left untouched).
Also hosts the small helpers the other AutoAttack modules share.
"""

import contextlib
import math

import torch
import torch.nn.functional as F

from aaer.attacks.checks import check_zero_gradients, fit_n_target_classes
from aaer.errors import UsageError
from aaer.threat import AA_NORMS


# ---------------------------------------------------------------- shared helpers

def check_norm_eps(norm, eps):
    if norm not in AA_NORMS.values():       # AutoAttack's names of aaer.threat.NORMS
        raise UsageError(f"norm={norm!r} is not supported; valid: "
                         f"{', '.join(AA_NORMS.values())}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps <= 0:
        raise UsageError(f"eps={eps!r} must be a positive finite number (pixel units, "
                         "e.g. 8/255)")
    return float(eps)


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name}={value!r} must be an integer >= 1")
    return value


def check_inputs(x, y):
    """Validate a batch of pixels in [0,1] and integer labels; return (x float, y long)."""
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise ValueError(f"x must be a float tensor of pixels in [0,1], got "
                         f"{type(x).__name__}{'' if not torch.is_tensor(x) else ' ' + str(x.dtype)}")
    if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0] \
            or torch.is_floating_point(y):
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},) matching x, got "
                         f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension (N, ...), got shape {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must be pixels in [0,1], got values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}]; normalisation "
                         "belongs inside the model")
    return x.detach().float(), y.detach().long()


@contextlib.contextmanager
def seeded(seed, device):
    """Seed torch's RNG like the official code, restoring the caller's state afterwards."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def bview(t, x):
    """Reshape a per-example vector to broadcast against a batch like x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def lp_norm(d, norm):
    flat = d.reshape(d.shape[0], -1)
    # L2 as the official code writes it: sqrt of the sum of squares (torch.norm's kernel
    # can differ in the last bit, and APGD's iterates then drift apart)
    return flat.abs().amax(1) if norm == "Linf" else (flat ** 2).sum(-1).sqrt()


def lp_normalize(d, norm):
    return d / bview(lp_norm(d, norm) + 1e-12, d)


def project_l2(x, z, eps):
    """Pull z into the L2 ball around x, then into [0,1] (the official order)."""
    d = z - x
    r = torch.clamp(lp_norm(d, "L2"), max=eps)
    return (x + lp_normalize(d, "L2") * bview(r, d)).clamp(0, 1)


def project_linf(x, z, eps):
    return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)


def logits_of(model, x):
    return model(x).float()


def checkpoints(n_iter):
    """[(i, k)]: after iteration i (0-based) the step size is checked over the last k steps.

    The first window is 22% of the iterations, each next one 3% shorter, at least 6%
    (the paper's p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)).
    """
    k, k_decr, k_min = max(int(.22 * n_iter), 1), max(int(.03 * n_iter), 1), \
        max(int(.06 * n_iter), 1)
    out, i = [], k - 1
    while i < n_iter:
        out.append((i, k))
        k = max(k - k_decr, k_min)
        i += k
    return out


# ---------------------------------------------------------------- losses

def dlr_loss(z, y):
    """-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3); higher = closer to misclassified."""
    zs, ind = z.sort(dim=1)
    z_y = z.gather(1, y[:, None])[:, 0]
    z_other = torch.where(ind[:, -1] == y, zs[:, -2], zs[:, -1])
    return -(z_y - z_other) / (zs[:, -1] - zs[:, -3] + 1e-12)


def dlr_targeted_loss(z, y, y_target):
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    zs = z.sort(dim=1)[0]
    z_y = z.gather(1, y[:, None])[:, 0]
    z_t = z.gather(1, y_target[:, None])[:, 0]
    return -(z_y - z_t) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def ce_loss(z, y):
    return F.cross_entropy(z, y, reduction="none")


# ---------------------------------------------------------------- APGD

class APGD:
    """Untargeted APGD on the cross-entropy ("ce") or DLR ("dlr") loss."""

    name = "apgd"

    def __init__(self, model, norm="Linf", eps=8 / 255, n_iter=100, n_restarts=1, loss="ce",
                 seed=0, rho=.75, eot_iter=1, device=None):
        self.model = model
        self.norm = norm
        self.eps = check_norm_eps(norm, eps)
        self.n_iter = check_positive_int("n_iter", n_iter)
        self.n_restarts = check_positive_int("n_restarts", n_restarts)
        self.eot_iter = check_positive_int("eot_iter", eot_iter)
        if loss not in ("ce", "dlr"):
            raise UsageError(f"loss={loss!r} is not supported; valid: 'ce', 'dlr'")
        self.loss = loss
        if not 0 < rho <= 1:
            raise UsageError(f"rho={rho!r} must be in (0, 1]")
        self.rho = rho
        self.seed = seed
        self.device = device

    def _loss_grad(self, x_adv, y, loss_fn):
        """Loss and its input gradient, averaged over `eot_iter` forward passes (EOT)."""
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):
            x_req = x_adv.clone().requires_grad_()
            with torch.enable_grad():
                logits = logits_of(self.model, x_req)
                loss = loss_fn(logits, y)
                total = loss.sum()
            grad += torch.autograd.grad(total, x_req)[0].detach()
        return logits.detach(), loss.detach(), grad / self.eot_iter

    def _project(self, x, z):
        return project_linf(x, z, self.eps) if self.norm == "Linf" else project_l2(x, z, self.eps)

    def _start(self, x):
        # drawn on the CPU as in the official code, so streams match on every device
        t = 2 * torch.rand(x.shape) - 1 if self.norm == "Linf" else torch.randn(x.shape)
        return (x + self.eps * lp_normalize(t.to(x.device), self.norm)).clamp(0, 1)

    def _run(self, x, y, loss_fn, check_grads=False):
        """One restart; returns (adversarial points found, still-robust mask)."""
        windows = dict(checkpoints(self.n_iter))
        x_adv = self._start(x)
        logits, loss, grad = self._loss_grad(x_adv, y, loss_fn)
        if check_grads:
            check_zero_gradients(grad)
        robust = logits.argmax(1) == y
        x_found = x_adv.clone()
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()

        step = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), 2. * self.eps, device=x.device)
        loss_steps = torch.zeros(self.n_iter, x.shape[0], device=x.device)
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones_like(robust)
        x_old = x_adv.clone()
        for i in range(self.n_iter):
            with torch.no_grad():
                moment = x_adv - x_old
                x_old = x_adv
                a = 0.75 if i > 0 else 1.0
                g = grad.sign() if self.norm == "Linf" else lp_normalize(grad, "L2")
                z = self._project(x, x_adv + step * g)
                x_adv = self._project(x, x_adv + a * (z - x_adv) + (1 - a) * moment)

            logits, loss, grad = self._loss_grad(x_adv, y, loss_fn)
            with torch.no_grad():
                fooled = logits.argmax(1) != y
                robust &= ~fooled
                x_found[fooled] = x_adv[fooled]
                loss_steps[i] = loss
                better = loss > loss_best
                x_best[better] = x_adv[better]
                grad_best[better] = grad[better]
                loss_best[better] = loss[better]

                if i in windows:
                    k = windows[i]
                    # increases over the window; the official code reads row -1 (still
                    # zero) as the predecessor of step 0 at the first check: kept as is
                    prev = torch.arange(i - k, i, device=x.device)
                    n_incr = (loss_steps[prev + 1] > loss_steps[prev]).sum(0)
                    oscillating = n_incr <= k * self.rho
                    stalled = ~reduced_last & (loss_best_last >= loss_best)
                    reduce = oscillating | stalled
                    reduced_last = reduce
                    loss_best_last = loss_best.clone()
                    if reduce.any():
                        step[reduce] /= 2
                        x_adv = x_adv.clone()
                        x_adv[reduce] = x_best[reduce]
                        grad[reduce] = grad_best[reduce]
        return x_found, robust

    def _prepare(self, x, y):
        x, y = check_inputs(x, y)
        device = torch.device(self.device) if self.device is not None else x.device
        return x.to(device), y.to(device), device

    def _loss_fn(self, n_classes):
        if self.loss == "dlr" and n_classes < 3:
            raise UsageError(f"the DLR loss needs at least 3 classes, the model has {n_classes}")
        return ce_loss if self.loss == "ce" else dlr_loss

    def perturb(self, x, y):
        """Adversarial examples for (x, y); points never fooled are returned unchanged."""
        x_in = x
        x, y, device = self._prepare(x, y)
        adv = x.clone()
        with seeded(self.seed, device), torch.no_grad():
            logits = logits_of(self.model, x)
            loss_fn = self._loss_fn(logits.shape[1])
            robust = logits.argmax(1) == y
            for _ in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                x_found, still = self._run(x[idx], y[idx], loss_fn,
                                           check_grads=self.loss == "dlr")
                robust[idx[~still]] = False
                adv[idx[~still]] = x_found[~still]
        return adv.to(x_in.device)


class APGDT(APGD):
    """APGD on the targeted DLR loss, targets = the top `n_target_classes` wrong classes."""

    name = "apgd-t"

    def __init__(self, model, norm="Linf", eps=8 / 255, n_iter=100, n_restarts=1,
                 n_target_classes=9, seed=0, rho=.75, eot_iter=1, device=None):
        super().__init__(model, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts,
                         loss="ce", seed=seed, rho=rho, eot_iter=eot_iter, device=device)
        self.loss = "dlr-targeted"
        self.n_target_classes = check_positive_int("n_target_classes", n_target_classes)

    def perturb(self, x, y):
        x_in = x
        x, y, device = self._prepare(x, y)
        adv = x.clone()
        with seeded(self.seed, device), torch.no_grad():
            logits = logits_of(self.model, x)
            n_classes = logits.shape[1]
            if n_classes < 4:
                raise UsageError(f"APGD-T's targeted DLR loss needs at least 4 classes, the "
                                 f"model has {n_classes}; leave 'apgd-t' out of the attacks")
            n_targets = fit_n_target_classes(self.n_target_classes, n_classes, "APGD-T")
            robust = logits.argmax(1) == y
            for rank in range(2, n_targets + 2):
                for _ in range(self.n_restarts):
                    idx = robust.nonzero().flatten()
                    if idx.numel() == 0:
                        break
                    y_target = logits_of(self.model, x[idx]).sort(dim=1)[1][:, -rank]

                    def loss_fn(z, y_, y_target=y_target):
                        return dlr_targeted_loss(z, y_, y_target)

                    x_found, still = self._run(x[idx], y[idx], loss_fn, check_grads=True)
                    robust[idx[~still]] = False
                    adv[idx[~still]] = x_found[~still]
        return adv.to(x_in.device)
