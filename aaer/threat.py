"""The threat model, one home for what every layer says about it (SPEC §10).

The norms a perturbation is measured in, how --epsilon turns into pixel units under each,
the largest L2 radius taken as meant, and the checks of a norm's name and of an L2 radius.
Methods, attacks, protocols and the settings read these from here.
"""
from __future__ import annotations

from aaer.checks import choice
from aaer.errors import UsageError

NORMS = ("linf", "l2")
# the same norms as AutoAttack names them
AA_NORMS = {"linf": "Linf", "l2": "L2"}

# L2 radii in use are a few pixel units at most (CIFAR 0.5, ImageNet 3.0); a larger value
# is most likely an L-inf-style 1/255 number
L2_EPS_MAX = 16.0


def pixel_eps(epsilon: float, norm) -> float:
    """--epsilon in pixel units: epsilon / 255 for L-inf, epsilon itself for L2."""
    return float(epsilon) if norm == "l2" else float(epsilon) / 255.0


def check_norm(norm, name: str = "norm") -> str:
    """``norm`` if it is one of NORMS, else a UsageError naming ``name`` and the valid ones."""
    return choice(name, norm, NORMS)


def check_l2_radius(epsilon: float, norm) -> None:
    """UsageError when an L2 --epsilon is larger than L2_EPS_MAX: most likely an L-inf
    style 1/255 number, given where the L2 radius in pixel units was meant."""
    if norm == "l2" and epsilon > L2_EPS_MAX:
        raise UsageError(f"invalid --epsilon {epsilon!r} with --norm l2: the L2 radius is in "
                         f"pixel units, e.g. 0.5 (128/255 = 0.502), at most {L2_EPS_MAX:g}; "
                         f"{epsilon:g}/255 would be --epsilon {epsilon / 255:.4g}")
