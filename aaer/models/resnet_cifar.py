"""ResNet-18 of the CIFAR lineage ('resnet18'): the FastAT Benchmark's CIFAR-10/100 model.

The post-activation ResNet-18 written for 32x32 images (the kuangliu/pytorch-cifar
design the FastAT Benchmark uses, fzjcdt/FastAT_Benchmark ``models/resnet.py``): a 3x3
stride-1 stem convolution with BatchNorm and ReLU (no max pool), four stages of two
BasicBlocks (64, 128, 256, 512 channels; stages 2-4 halve the side), each block
relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)) with a 1x1 convolution + BatchNorm
shortcut where the shape changes, a 4x4 average pool and a linear classifier with bias.
State-dict keys as there (conv1, bn1, layerK.i.{conv1, bn1, conv2, bn2, shortcut.0,
shortcut.1}, linear), so the benchmark's checkpoints load; PyTorch's default init.

The benchmark feeds raw [0, 1] pixels (no normalisation layer): train it with
``--normalization none`` to do the same. Larger images than 32x32 keep the 4x4 pool (as the
PreActResNet-18 of the lineage does) and the classifier widens to 512 * (side/4)^2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from .registry import register_model
from .resnet import BasicBlock   # the same block (and state-dict keys) as AAER's ImageNet ResNet


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        side = image_size
        for _ in range(3):                       # layer2..layer4 halve the side
            side = (side - 1) // 2 + 1
        pooled = side // 4
        if pooled < 1:
            raise UsageError(f"image_size {image_size} is too small for resnet18: the final "
                             f"feature map is {side}x{side}, smaller than its 4x4 average "
                             "pool; use image_size >= 25")
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, stride=1)
        self.layer2 = self._make_layer(128, stride=2)
        self.layer3 = self._make_layer(256, stride=2)
        self.layer4 = self._make_layer(512, stride=2)
        self.linear = nn.Linear(512 * pooled * pooled, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in (stride, 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet18:
    return ResNet18(num_classes, in_channels, image_size)
