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


NORMALIZATIONS = ("dataset", "none", "imagenet", "cifar10")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# the AAER recipe's CIFAR-10 statistics (SPEC §3), for a CIFAR-10 copy read as an image
# folder (whose own default is ImageNet's)
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
FIXED = {"imagenet": IMAGENET, "cifar10": CIFAR10}


def input_stats(normalization: str, mean: Stats, std: Stats, in_channels: int):
    """(mean, std) the model normalises its input with (--normalization): the data set's
    (``mean``, ``std``), none (0 and 1: a network that normalises itself, or none at all, as
    the FastAT Benchmark's), ImageNet's (for architectures built for it), or CIFAR-10's (a
    CIFAR-10 copy read as an image folder)."""
    if normalization == "dataset":
        def values(v):
            return tuple(float(x) for x in (v.flatten().tolist() if isinstance(v, torch.Tensor)
                                            else v))
        return values(mean), values(std)
    if normalization == "none":
        return (0.0,) * in_channels, (1.0,) * in_channels
    if normalization in FIXED:
        if in_channels != 3:
            raise UsageError(f"--normalization {normalization} is for RGB images; these have "
                             f"{in_channels} channel(s); valid: dataset, none")
        return FIXED[normalization]
    raise UsageError(f"invalid --normalization {normalization!r}; valid: "
                     f"{', '.join(NORMALIZATIONS)}")


def build(name: str, num_classes: int, in_channels: int, image_size: int, mean: Stats, std: Stats,
          kwargs: dict | None = None) -> Normalized:
    """create_model(name, ..., **kwargs) wrapped in Normalized(mean, std); mean/std need
    in_channels values (or 1)."""
    for what, values in (("mean", mean), ("std", std)):
        n = torch.as_tensor(values).numel()
        if n not in (1, in_channels):
            raise UsageError(f"{what} has {n} values but in_channels is {in_channels}; give {in_channels} values (or 1)")
    return Normalized(create_model(name, num_classes, in_channels, image_size, **(kwargs or {})),
                      mean, std)
