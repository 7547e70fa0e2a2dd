"""Models from outside aaer, by name: ``package.module:factory`` (a callable of your own
code that returns an nn.Module) and ``timm:<name>`` (a timm architecture, randomly
initialised: timm is an optional extra and nothing is downloaded).

    aaer train --model mypkg.nets:wide_cnn --model-arg width=64 ...
    aaer train --model timm:resnet18 ...

A factory is called with the keyword arguments of --model-arg and, when its signature takes
them, ``num_classes``, ``in_channels`` and ``image_size`` from the data set; it returns the
bare network, which (as every aaer model) gets normalised input (--normalization). timm
models get ``num_classes`` and ``in_chans``. The run's config.json records the name and the
arguments, so a run resumes, exports and evaluates like any other (the module must be
importable there too).
"""
from __future__ import annotations

import importlib
import inspect

import torch.nn as nn

from aaer.errors import UsageError, require
from aaer.models.registry import register_model_family

FACTORY = r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)$"
TIMM = r"^timm:(?P<arch>[\w.\-]+)$"


def _checked(net, name: str) -> nn.Module:
    if not isinstance(net, nn.Module):
        raise UsageError(f"--model {name!r} returned a {type(net).__name__}, not a "
                         "torch.nn.Module; valid: a callable returning the network")
    return net


@register_model_family(TIMM, "timm:<name> (a timm architecture; pip install timm)")
def timm_model(match, num_classes, in_channels, image_size, **kwargs):
    timm = require("timm", "timm", "timm", f"--model timm:{match['arch']}")
    name = match["arch"]
    if not timm.is_model(name):
        raise UsageError(f"--model timm:{name}: timm has no such architecture; list them with "
                         "python -c \"import timm; print(timm.list_models())\"")
    return _checked(timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_channels, **kwargs), f"timm:{name}")


@register_model_family(FACTORY, "package.module:factory (your own callable)")
def factory_model(match, num_classes, in_channels, image_size, **kwargs):
    name = match.group(0)
    try:
        module = importlib.import_module(match["module"])
    except ImportError as e:
        raise UsageError(f"--model {name!r}: cannot import {match['module']!r} ({e}); valid: "
                         "a module importable from the current directory or PYTHONPATH")
    factory = getattr(module, match["attr"], None)
    if not callable(factory):
        raise UsageError(f"--model {name!r}: {match['module']} has no callable "
                         f"{match['attr']!r}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    args = {k: v for k, v in given.items() if k in params and k not in kwargs}
    try:
        net = factory(**args, **kwargs)
    except TypeError as e:
        raise UsageError(f"--model {name!r} refused its arguments {sorted({**args, **kwargs})}: "
                         f"{e}") from None
    return _checked(net, name)
