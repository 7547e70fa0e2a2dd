"""Small models for CPU-scale experiments and closed-form tests.

'small-cnn' / 'small-cnn-32': four 3x3 conv-BatchNorm-ReLU layers of widths w, 2w, 4w, 4w
(the last three with stride 2), global average pooling and a linear classifier; w = 16
or 32. It trains in minutes on a CPU (SPEC section 8). 'linear': flatten + one affine
layer, so logits are W x + b and attacks on it have closed-form answers.
Both keep PyTorch's default init.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from .registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UsageError(f"width must be a positive integer, got {width!r}")
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.conv4 = nn.Conv2d(4 * w, 4 * w, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(self.bn3(self.conv3(out)))
        out = F.relu(self.bn4(self.conv4(out)))
        return self.fc(out.mean(dim=(2, 3)))


class LinearModel(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@register_model("small-cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=16)


@register_model("small-cnn-32")
def small_cnn_32(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width=32)


@register_model("linear")
def linear(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> LinearModel:
    return LinearModel(num_classes, in_channels, image_size)
