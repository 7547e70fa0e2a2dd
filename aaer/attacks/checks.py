"""Sanity checks that flag evaluations AutoAttack cannot be trusted on.

Each check emits an `AutoAttackWarning` (via `warnings.warn`) and never stops the run,
as in the official AutoAttack: a probability output, a forward pass that is not
deterministic, a forward pass that itself computes gradients, gradients that vanish
(masking), too few classes for the targeted attacks, and a black-box attack that beats
the white-box ones.
"""

import sys
import warnings

import torch


class AutoAttackWarning(UserWarning):
    """A hint that the robustness evaluation may be unreliable."""


def _warn(msg):
    warnings.warn(msg, AutoAttackWarning, stacklevel=3)


def _unit_rows(z):
    z = z.reshape(z.shape[0], -1).float()
    return z / (z.norm(dim=1, keepdim=True) + 1e-10)


@torch.no_grad()
def check_randomized(forward, x, y, n=5, tol=1e-4):
    """Warn if `n` forward passes of the same input disagree (a randomized model)."""
    outs = [_unit_rows(forward(x)) for _ in range(n)]
    n_correct = [(o.argmax(1) == y).sum().item() for o in outs]
    max_diff = max((outs[i] - outs[j]).norm(dim=1).max().item()
                   for i in range(n) for j in range(i + 1, n))
    if len(set(n_correct)) > 1 or max_diff > tol:
        _warn(f"the forward pass is not deterministic (outputs of {n} identical calls differ "
              f"by up to {max_diff:.2e}): it looks like a randomized defense, use "
              "version='rand' (EOT) to evaluate it")
        return True
    return False


@torch.no_grad()
def check_range_output(forward, x, tol=1e-5):
    """Warn if the outputs look like probabilities instead of logits; return #classes."""
    out = forward(x).float()
    if out.max() < 1 + tol and out.min() > -tol and ((out.sum(-1) - 1).abs() < tol).all():
        _warn("the model's outputs look like a probability distribution (all in [0,1], rows "
              "sum to 1): the attacks need logits, a softmax output weakens them")
    return out.shape[-1]


def check_zero_gradients(grad):
    """Warn if some points have an exactly zero input gradient (gradient masking)."""
    n_zero = int((grad.reshape(grad.shape[0], -1).abs().sum(1) == 0).sum())
    if n_zero > 0:
        _warn(f"{n_zero} of {grad.shape[0]} points have a zero input gradient: "
              "gradient-based attacks are unreliable on them (gradient masking?)")
    return n_zero


_GRAD_FUNCS = ("grad", "backward", "_make_grads")


def check_dynamic(forward, x):
    """Warn if the forward pass itself computes gradients (a test-time adaptive defense)."""
    calls = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name in _GRAD_FUNCS:
            calls.append(frame.f_code.co_name)

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        forward(x)
    finally:
        sys.settrace(old)
    if calls:
        _warn("the forward pass computes gradients (calls to "
              f"{sorted(set(calls))}): it looks like a dynamic defense, AutoAttack alone "
              "may not be enough to evaluate it")
        return True
    return False


def check_eval_mode(model):
    """Warn if an nn.Module is in training mode (batch-norm statistics, dropout)."""
    if isinstance(model, torch.nn.Module) and model.training:
        _warn("the model is in training mode: call model.eval() before evaluating it")
        return True
    return False


def fit_n_target_classes(n_target_classes, n_classes, attack):
    """Number of target classes a targeted attack can use with `n_classes` classes.

    Targets are the classes ranked 2nd..(n_target_classes+1)th, so at most n_classes-1.
    """
    if n_target_classes > n_classes - 1:
        _warn(f"{attack}: {n_target_classes} target classes requested but the model has "
              f"only {n_classes} classes; using {n_classes - 1}")
        return n_classes - 1
    return n_target_classes


def check_square_sr(per_attack, tol=0.002):
    """Warn if Square (black-box) lowered robust accuracy noticeably after the others."""
    names = list(per_attack)
    if "square" not in names or names.index("square") == 0:
        return False
    before = per_attack[names[names.index("square") - 1]]
    if per_attack["square"] < before - tol:
        _warn(f"Square Attack lowered the robust accuracy by {before - per_attack['square']:.2%} "
              "after the gradient-based attacks: the gradients may be obfuscated, consider "
              "more Square queries/restarts or an adaptive attack")
        return True
    return False
