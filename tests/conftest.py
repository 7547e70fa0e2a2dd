import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))


class TinyNet(torch.nn.Module):
    """A small conv net with BatchNorm, for tests that need real BN/train-mode behaviour."""

    def __init__(self, in_ch=3, n_classes=10, width=8, freq=None):
        super().__init__()
        # freq: feed sin(freq * x) instead of x, a strongly curved input map under which a
        # single attack step often lowers the loss (abnormal adversarial examples)
        self.freq = freq
        self.conv1 = torch.nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, n_classes)

    def forward(self, x):
        if self.freq is not None:
            x = torch.sin(self.freq * x)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread avoids the thread hand-offs that dominate on a busy
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_net():
    return TinyNet
