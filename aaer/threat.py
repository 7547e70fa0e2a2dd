"""The threat model, one home for what every layer says about it (SPEC §10).

The norms a perturbation is measured in, how --epsilon turns into pixel units under each,
the largest L2 radius taken as meant, and the check of a norm's name. Methods, attacks,
protocols and the settings read these from here.
"""
from __future__ import annotations

from aaer.checks import choice

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
