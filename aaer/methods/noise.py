"""The ``noise`` option of the baselines: where a single-step attack starts.

Every single-step baseline whose authors allow it can start its attack from N-FGSM-style
noise instead of its own default. The three starts are the ones of fgsm.py:

    "zero"  eta = 0,                 step projected to the eps-ball      (FGSM)
    "rs"    eta ~ U(-eps, eps),      step projected to the eps-ball      (RS-FGSM)
    "n"     eta ~ U(-2eps, 2eps),    no projection, |delta| <= 3 eps     (N-FGSM)

``noise_settings`` maps the name to SingleStepAttack's (delta_init, clamp).
"""
from __future__ import annotations

from aaer.checks import number
from aaer.errors import UsageError

NOISES = {"zero": ("zero", 1), "rs": ("random", 1), "n": ("random", 0)}


def noise_settings(noise: str) -> tuple[str, int]:
    if noise not in NOISES:
        raise UsageError(f"noise must be one of {tuple(NOISES)} (zero: FGSM start, rs: "
                         f"U(-eps,eps) and projection, n: U(-2eps,2eps), no projection), "
                         f"got {noise!r}")
    return NOISES[noise]


def check_nonnegative(name: str, value) -> float:
    return number(name, value, low=0)


def check_positive(name: str, value) -> float:
    return number(name, value, low=0, low_open=True)


def check_count(name: str, value, minimum: int = 1) -> int:
    return number(name, value, integer=True, low=minimum)
