"""A bias-free linear model on small images, for tests of methods whose steps have closed
forms on it (the UAP family, LIET): its input and weight gradients are known exactly."""
import torch
from torch import nn

SHAPE = (3, 4, 4)
D = 3 * 4 * 4


class Linear(nn.Module):
    """z = W vec(x): bias-free, so the weight gradients have closed forms."""

    def __init__(self, k=3, bias=False):
        super().__init__()
        self.fc = nn.Linear(D, k, bias=bias)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Recorder(nn.Module):
    """Runs ``net`` and keeps a copy of every input it was given, in order."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def batch(n=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.8 * torch.rand(n, *SHAPE, generator=g)      # the box's interior
    return x, torch.arange(n) % k
