"""WideResNet of the TRADES / AAER lineage (wrn-34-10, wrn-28-10, any wrn-<depth>-<widen>).

State-dict keys match the AAER repository's wideresnet.py: conv1, blockK.layer.i.{bn1,
conv1, bn2, conv2, convShortcut}, bn1, fc. Init as there: kaiming-normal (fan_out) convs,
BatchNorm weight 1 / bias 0, Linear bias 0 (Linear weight PyTorch default).

The reference pools with avg_pool2d(8), which is a global average over the 8x8 map of a
32x32 input; this version averages globally, so it gives the same numbers at 32x32 and
also works for other image sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from .registry import register_model, register_model_family


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        if self.equal_in_out:
            self.convShortcut = None
        else:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(a)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # when the width changes, the projection sees the pre-activated input
        skip = x if self.equal_in_out else self.convShortcut(a)
        return skip + out


class NetworkBlock(nn.Module):
    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(num_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise UsageError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise UsageError(f"WideResNet widen factor must be a positive integer, got {widen_factor!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise UsageError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(out.mean(dim=(2, 3)))


def wideresnet(depth: int, widen: int, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
               drop_rate: float = 0.0) -> WideResNet:
    """WRN-depth-widen; image_size is accepted for the registry's signature (pooling is global)."""
    return WideResNet(depth, widen, num_classes, in_channels, drop_rate)


@register_model("wrn-34-10")
def wrn_34_10(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return wideresnet(34, 10, num_classes, in_channels, image_size)


@register_model("wrn-28-10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return wideresnet(28, 10, num_classes, in_channels, image_size)


@register_model_family(r"^wrn-(\d+)-(\d+)$", "wrn-<depth>-<widen> (depth = 6n+4)")
def _wrn_family(match, num_classes: int = 10, in_channels: int = 3,
                image_size: int = 32) -> WideResNet:
    return wideresnet(int(match.group(1)), int(match.group(2)), num_classes, in_channels,
                      image_size)
