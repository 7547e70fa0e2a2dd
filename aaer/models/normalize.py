"""Input normalisation as a separable layer: Normalized(net, mean, std)(x) = net((x - mean) / std).

Models take pixels in [0, 1]; attacks and eps live in that pixel space. The wrapped bare
network is `.net`. mean/std are non-persistent buffers, so Normalized.state_dict() holds
exactly the bare network's keys prefixed by 'net.' and checkpoints stay in the lineage's
format; mean/std still follow .to(device / dtype).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from aaer.errors import UsageError
from .registry import create_model

Stats = Union[Sequence[float], torch.Tensor]


def _as_channel_stats(what: str, values: Stats) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).detach().clone().flatten()
    if t.numel() == 0:
        raise UsageError(f"{what} must have one value per channel, got an empty {what}")
    if not torch.isfinite(t).all():
        raise UsageError(f"{what} must be finite, got {t.tolist()}")
    return t.view(1, -1, 1, 1)


class Normalized(nn.Module):
    def __init__(self, net: nn.Module, mean: Stats, std: Stats):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        mean_t = _as_channel_stats("mean", mean)
        std_t = _as_channel_stats("std", std)
        if mean_t.shape != std_t.shape:
            raise UsageError(
                f"mean and std need the same number of channels, got {mean_t.shape[1]} "
                f"({mean_t.flatten().tolist()}) and {std_t.shape[1]} ({std_t.flatten().tolist()})"
            )
        if (std_t <= 0).any():
            raise UsageError(f"std must be positive in every channel, got {std_t.flatten().tolist()}")
        self.net = net
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[1]
        if x.dim() != 4 or (channels != 1 and x.shape[1] != channels):
            raise UsageError(
                f"Normalized expects images shaped [N, {channels}, H, W] with pixels in [0, 1], "
                f"got shape {tuple(x.shape)}"
            )
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def build(name: str, num_classes: int, in_channels: int, image_size: int, mean: Stats, std: Stats) -> Normalized:
    """create_model(name, ...) wrapped in Normalized(mean, std); mean/std need in_channels values (or 1)."""
    for what, values in (("mean", mean), ("std", std)):
        n = torch.as_tensor(values).numel()
        if n not in (1, in_channels):
            raise UsageError(f"{what} has {n} values but in_channels is {in_channels}; give {in_channels} values (or 1)")
    return Normalized(create_model(name, num_classes, in_channels, image_size), mean, std)
