"""PreActResNet-18 of the fast-adversarial-training lineage (Wong et al. 2020, AAER).

State-dict keys match the lineage's checkpoints exactly: conv1, layer1.0.bn1, ...,
layerK.0.shortcut.0 (1x1 projection), bn, linear. Weights use PyTorch's default init,
as the reference does.

The AAER repository has two block variants with identical keys but different forward
passes: its CIFAR-10/100 and SVHN code applies the 1x1 projection shortcut to the block's
raw input x, its Tiny-ImageNet code (like Wong et al.'s original) to relu(bn1(x)).
`shortcut_from` selects between them: 'preactresnet18' builds the first,
'preactresnet18-preact-shortcut' the second (use it for AAER's Tiny-ImageNet checkpoints).

'preactresnet18-fastat' is the FastAT Benchmark's Tiny-ImageNet model
(fzjcdt/FastAT_Benchmark ``models/preact_resnet.py``): the pre-activation shortcut, and
NO final BatchNorm + ReLU (the last block's sum goes straight to the pool; no ``bn`` key),
with an 8x8 average pool, i.e. the mean of the whole 8x8 final map of a 64x64 image, and a
512-wide classifier. At other sizes aaer pools the whole final map too (the benchmark's
fixed 8x8 pool would fail below 64 pixels).

'preactresnet18-w<W>' is the same network (the 'preactresnet18' block) with W channels in
its first stage instead of 64 (then 2W, 4W, 8W): PreActResNet-18 scaled down for the CPU,
as the CIFAR-10 CO fixture uses it; 'preactresnet18-w64' is 'preactresnet18'.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from .registry import register_model, register_model_family

_SHORTCUT_SOURCES = ("input", "preact")


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_from: str = "input"):
        super().__init__()
        self.shortcut_from = shortcut_from
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(x if self.shortcut_from == "input" else a)
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + skip


def _conv3x3_out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


class PreActResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 shortcut_from: str = "input", final_bn: bool = True, width: int = 64):
        super().__init__()
        if shortcut_from not in _SHORTCUT_SOURCES:
            raise UsageError(f"shortcut_from must be one of {_SHORTCUT_SOURCES}, got {shortcut_from!r}")
        self.final_bn = final_bn
        side = image_size
        for _ in range(3):  # layer2..layer4 halve the side
            side = _conv3x3_out(side, 2)
        # the lineage's fixed avg_pool2d(4); the FastAT variant pools the whole map
        pooled = side // 4 if final_bn else 1
        if pooled < 1:
            raise UsageError(
                f"image_size {image_size} is too small for preactresnet18: the final feature map is "
                f"{side}x{side}, smaller than its 4x4 average pool; use image_size >= 25"
            )
        w = width
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(w, stride=1, shortcut_from=shortcut_from)
        self.layer2 = self._make_layer(2 * w, stride=2, shortcut_from=shortcut_from)
        self.layer3 = self._make_layer(4 * w, stride=2, shortcut_from=shortcut_from)
        self.layer4 = self._make_layer(8 * w, stride=2, shortcut_from=shortcut_from)
        self.bn = nn.BatchNorm2d(8 * w) if final_bn else None
        # 512 for 32x32 inputs, 512*4 for Tiny-ImageNet's 64x64, as in the reference files
        self.linear = nn.Linear(8 * w * pooled * pooled, num_classes)

    def _make_layer(self, planes: int, stride: int, shortcut_from: str) -> nn.Sequential:
        blocks = []
        for s in (stride, 1):
            blocks.append(PreActBlock(self.in_planes, planes, s, shortcut_from))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.final_bn:
            return self.linear(out.mean(dim=(2, 3)))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


@register_model("preactresnet18")
def preactresnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> PreActResNet18:
    return PreActResNet18(num_classes, in_channels, image_size)


@register_model("preactresnet18-preact-shortcut")
def preactresnet18_preact_shortcut(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> PreActResNet18:
    return PreActResNet18(num_classes, in_channels, image_size, shortcut_from="preact")


@register_model("preactresnet18-fastat")
def preactresnet18_fastat(num_classes: int = 10, in_channels: int = 3, image_size: int = 64) -> PreActResNet18:
    return PreActResNet18(num_classes, in_channels, image_size, shortcut_from="preact", final_bn=False)


@register_model_family(r"^preactresnet18-w(\d+)$", "preactresnet18-w<W> (first-stage width W; 64 is preactresnet18)")
def _preactresnet18_width(match, num_classes: int = 10, in_channels: int = 3,
                          image_size: int = 32) -> PreActResNet18:
    width = int(match.group(1))
    if width < 1:
        raise UsageError(f"preactresnet18-w<W>: W must be a positive integer, got {width}")
    return PreActResNet18(num_classes, in_channels, image_size, width=width)
