"""Model registry: names -> constructors, in the spirit of timm's create_model.

Every constructor takes (num_classes, in_channels, image_size) and returns the bare
network, which expects already-normalised input (see aaer.models.normalize for the
normalisation layer). Besides the registered names, create_model understands the
pattern 'wrn-<depth>-<widen>' for any WideResNet of the TRADES/AAER lineage.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List

import torch.nn as nn

Constructor = Callable[[int, int, int], nn.Module]

_REGISTRY: Dict[str, Constructor] = {}
_WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")


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


def list_models() -> List[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _check_positive_int(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the bare network registered as `name` (input must already be normalised)."""
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("image_size", image_size)
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes, in_channels, image_size)
    match = _WRN_PATTERN.match(name) if isinstance(name, str) else None
    if match:
        from .wide_resnet import wideresnet

        depth, widen = int(match.group(1)), int(match.group(2))
        return wideresnet(depth, widen, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    raise ValueError(
        f"unknown model name {name!r}; registered models: {list_models()} "
        "(any 'wrn-<depth>-<widen>' with depth = 6n+4 also works)"
    )
