"""Model registry: names -> constructors, in the spirit of timm's create_model.

Every constructor takes (num_classes, in_channels, image_size) and returns the bare
network, which expects already-normalised input (see aaer.models.normalize for the
normalisation layer). Besides single names, a module can register a family of names by a
pattern (wide_resnet.py: 'wrn-<depth>-<widen>' for any WideResNet of the TRADES/AAER
lineage). The registry imports no architecture.
"""
from __future__ import annotations

import inspect
import re
from typing import Callable, Dict, List, Tuple

import torch.nn as nn

from aaer.errors import UsageError

Constructor = Callable[[int, int, int], nn.Module]

_REGISTRY: Dict[str, Constructor] = {}
# families of names (e.g. wrn-<depth>-<widen>): pattern -> (factory(match, num_classes,
# in_channels, image_size), how the family is written in messages)
_PATTERNS: List[Tuple["re.Pattern", Callable, str]] = []


def register_model(name: str):
    """Decorator registering `constructor(num_classes, in_channels, image_size)` as `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(constructor: Constructor) -> Constructor:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered; registered names: {list_models()}")
        _REGISTRY[name] = constructor
        return constructor

    return decorator


def register_model_family(pattern: str, described: str):
    """Decorator registering ``factory(match, num_classes, in_channels, image_size)`` for
    every name matching the regular expression ``pattern`` (``described`` says how such
    names are written, for messages)."""
    def decorator(factory):
        _PATTERNS.append((re.compile(pattern), factory, described))
        return factory

    return decorator


def family_of(name: str):
    """(match, factory) of the family ``name`` belongs to, or None."""
    for pattern, factory, _ in _PATTERNS:
        m = pattern.match(name) if isinstance(name, str) else None
        if m:
            return m, factory
    return None


def families() -> List[str]:
    return [described for _, _, described in _PATTERNS]


def check_model_name(name: str) -> None:
    """UsageError naming the registered models when ``name`` is none of them."""
    if name not in _REGISTRY and family_of(name) is None:
        more = "".join(f" or {d}" for d in families())
        raise UsageError(f"unknown --model {name!r}; valid: {', '.join(list_models())}{more}")


def list_models() -> List[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _check_positive_int(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 **kwargs) -> nn.Module:
    """Build the bare network registered as `name` (input must already be normalised).
    ``kwargs``: arguments of a family's factory (a model of one's own, a timm model); a
    single registered name takes none."""
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("image_size", image_size)
    if name in _REGISTRY:
        if kwargs:
            raise UsageError(f"--model {name} takes no --model-arg (given: {sorted(kwargs)}); "
                             "model arguments go to a package.module:factory or timm model")
        return _REGISTRY[name](num_classes, in_channels, image_size)
    found = family_of(name)
    if found:
        match, factory = found
        if kwargs and not any(p.kind is p.VAR_KEYWORD
                              for p in inspect.signature(factory).parameters.values()):
            raise UsageError(f"--model {name} takes no --model-arg (given: {sorted(kwargs)})")
        return factory(match, num_classes, in_channels, image_size, **kwargs)
    more = "".join(f" (any {d} also works)" for d in families())
    raise UsageError(f"unknown model name {name!r}; registered models: {list_models()}{more}")
