"""The one check for numbers: finite, in range, an integer where an integer is meant.

Every numeric setting of every command, every method hyper-parameter and every number
read back from a run's files goes through ``number``; its message names the setting, the
bad value and what is valid, e.g. ``invalid --epsilon nan: not a finite number (must be in
(0, 255])``.
"""
from __future__ import annotations

import math
from typing import Sequence

from aaer.errors import UsageError


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def describe_range(low=None, high=None, low_open=False, high_open=False,
                   integer=False) -> str:
    """'in (0, 255]', '>= 1', 'an integer >= 0', ... (what a value must be)."""
    kind = "an integer " if integer else ""
    if low is not None and high is not None:
        return (f"{kind}in {'(' if low_open else '['}{_num(low)}, {_num(high)}"
                f"{')' if high_open else ']'}")
    if low is not None:
        return f"{kind}{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{kind}{'<' if high_open else '<='} {_num(high)}"
    return "an integer" if integer else "a finite number"


def number(name: str, value, *, integer: bool = False, low=None, high=None,
           low_open: bool = False, high_open: bool = False):
    """``value`` as an int (integer=True) or float, or UsageError naming ``name``.

    NaN and infinity are refused everywhere; True/False are not numbers; an integer
    setting takes a float only when it is a whole number (2.0 -> 2).
    """
    what = describe_range(low, high, low_open, high_open, integer)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"invalid {name} {value!r}: not a number (must be {what})")
    if not math.isfinite(value):
        rest = "" if what == "a finite number" else f" (must be {what})"
        raise UsageError(f"invalid {name} {value!r}: not a finite number{rest}")
    if integer:
        if value != int(value):
            raise UsageError(f"invalid {name} {value!r}: not an integer (must be {what})")
        value = int(value)
    else:
        value = float(value)
    if low is not None and (value <= low if low_open else value < low) or \
            high is not None and (value >= high if high_open else value > high):
        raise UsageError(f"invalid {name} {value!r}: must be {what}")
    return value


def choice(name: str, value, choices: Sequence) -> object:
    """``value`` if it is one of ``choices``, else UsageError listing them."""
    if value not in choices:
        raise UsageError(f"invalid {name} {value!r}; valid: "
                         f"{', '.join(str(c) for c in choices)}")
    return value
