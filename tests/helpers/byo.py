"""Models of "one's own code" for the bring-your-own-model tests: factories that aaer reaches
by name (``--model tests.helpers.byo:wide_cnn``), as a user's package would be reached."""
import torch
from torch import nn


class WideCNN(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def wide_cnn(num_classes, in_channels, width=8):
    """Takes num_classes and in_channels from aaer, width from --model-arg."""
    return WideCNN(num_classes, in_channels, width)


def fixed_cnn(width=4):
    """Takes only its own argument: a 10-class RGB network (aaer passes nothing it lacks)."""
    return WideCNN(10, 3, width)


def not_a_module(num_classes):
    return "a string"
