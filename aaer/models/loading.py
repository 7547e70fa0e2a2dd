"""Load a checkpoint's state dict into a network, whatever wrapper saved it.

Accepts the bare lineage format (conv1.weight, ...), Normalized's 'net.' prefix,
DataParallel/DDP's 'module.' and torch.compile's '_orig_mod.' (in any nesting), then
loads strictly. On a mismatch the UsageError lists missing / unexpected keys and shape
differences, and names the create_model(...) call the state dict would fit when one of
the registered architectures does.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from aaer.errors import UsageError
from .normalize import Normalized
from .registry import create_model, family_of, list_models

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")
_SHOW = 10


def _unwrap_module(net: nn.Module) -> nn.Module:
    while True:
        if isinstance(net, Normalized):
            net = net.net
        elif isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):  # torch.compile wrapper
            net = net._orig_mod
        else:
            return net


def _strip_prefixes(state: Dict[str, torch.Tensor], expected: set) -> Dict[str, torch.Tensor]:
    while set(state) != expected:
        for p in _WRAPPER_PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                break
        else:
            break
    return state


def _check_tensors(state) -> None:
    if not isinstance(state, Mapping):
        raise UsageError(f"state must be a dict of tensors (a state_dict), got {type(state).__name__}")
    if not state:
        raise UsageError("state is an empty dict; expected a state_dict with the network's parameters")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        nested = [k for k in _CONTAINER_KEYS if isinstance(state.get(k), Mapping)]
        hint = f"; it looks like a checkpoint container: pass state[{nested[0]!r}]" if nested else ""
        raise UsageError(
            f"state must map parameter names to tensors, but these entries are not tensors: "
            f"{not_tensors[:_SHOW]}{hint}"
        )


def _is_optional(key: str) -> bool:
    # checkpoints from PyTorch < 0.4.1 lack BatchNorm's counter; load_state_dict fills it in
    return key.endswith("num_batches_tracked")


def _fits(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> Tuple[List[str], List[str], List[str]]:
    missing = [k for k in expected if k not in state and not _is_optional(k)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: state dict {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    return missing, unexpected, shapes


def _listing(what: str, items: List[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {items[:_SHOW]}{more}"


def _guess_architecture(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The create_model(...) call whose network has exactly these keys and shapes, if any."""
    matrices = [v for v in state.values() if v.dim() == 2]
    if not matrices:
        return None
    num_classes = matrices[-1].shape[0]  # the classifier is the last affine layer in every model here
    kernels = [v for v in state.values() if v.dim() == 4]
    in_channels_options = [kernels[0].shape[1]] if kernels else [3, 1]
    names = list_models()
    stage_ids = {k.split(".")[2] for k in state if k.startswith("block1.layer.")}
    first = state.get("block1.layer.0.conv1.weight")
    if stage_ids and first is not None and first.shape[0] % 16 == 0:
        wrn = f"wrn-{6 * len(stage_ids) + 4}-{first.shape[0] // 16}"
        if wrn not in names and family_of(wrn) is not None:
            names.append(wrn)
    for name in names:
        for in_channels in in_channels_options:
            for image_size in (32, 64, 28, 224):
                try:
                    with torch.device("meta"):
                        candidate = create_model(name, num_classes, in_channels, image_size).state_dict()
                except (ValueError, RuntimeError):
                    continue
                missing, unexpected, shapes = _fits(state, candidate)
                if missing or unexpected:
                    break  # keys do not depend on image_size
                if not shapes:
                    return (f"create_model({name!r}, num_classes={num_classes}, "
                            f"in_channels={in_channels}, image_size={image_size})")
    return None


def load_state_dict_into(net: nn.Module, state: dict) -> None:
    """Strip wrapper prefixes from `state` and load it strictly into `net` (or the bare net inside it)."""
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    _check_tensors(state)
    target = _unwrap_module(net)
    expected = target.state_dict()
    state = _strip_prefixes(dict(state), set(expected))
    missing, unexpected, shapes = _fits(state, expected)
    if missing or unexpected or shapes:
        parts = [f"state dict does not fit {type(target).__name__}"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if shapes:
            parts.append(_listing("shape mismatches", shapes))
        matrices = [k for k, v in expected.items() if v.dim() == 2]
        head = matrices[-1] if matrices else None
        if head is not None and head in state and state[head].dim() == 2 \
                and state[head].shape[0] != expected[head].shape[0]:
            parts.append(f"the state dict has num_classes={state[head].shape[0]} ({head} is "
                         f"{tuple(state[head].shape)}), the model num_classes={expected[head].shape[0]}")
        kernels = [k for k, v in expected.items() if v.dim() == 4]
        stem = kernels[0] if kernels else None
        if stem is not None and stem in state and state[stem].dim() == 4 \
                and state[stem].shape[1] != expected[stem].shape[1]:
            parts.append(f"the state dict has in_channels={state[stem].shape[1]}, the model "
                         f"in_channels={expected[stem].shape[1]}")
        guess = _guess_architecture(state)
        if guess:
            parts.append(f"it fits {guess}")
        raise UsageError("; ".join(parts))
    target.load_state_dict(state, strict=True)
