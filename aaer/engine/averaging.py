"""The engine's averaged model: an exponential moving average of the weights (--weight-average).

After every optimiser step, every floating-point entry of the network's state dict,
parameters AND BatchNorm running statistics alike, moves toward the live model:

    avg = tau * avg + (1 - tau) * w

as the FastAT Benchmark does (fzjcdt/FastAT_Benchmark, fast_at/*.py: ``exp_avg[key] = (1 -
tau) * value + tau * exp_avg[key]`` over ``model.state_dict()``), so the averaged network
carries averaged BN statistics and needs no recalibration pass. Two details follow that
code: the average starts at the weights after the first optimiser step (its ``exp_avg``
holds the live tensors until the first update), and integer buffers (BN's
``num_batches_tracked``) are copied, not averaged (the benchmark's float average of them is
truncated back to an integer when loaded, and BN with a momentum never reads them).

The averaged network is a second copy of the model (same class, same normalisation layer),
in eval mode; it is saved in every checkpoint and rewind point and restored exactly.
"""
from __future__ import annotations

import copy
from typing import Any

import torch


class AveragedModel:
    """EMA of ``model``'s state with decay ``tau`` (0 < tau < 1)."""

    def __init__(self, model: torch.nn.Module, tau: float):
        self.tau = float(tau)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One optimiser step of ``model`` happened: move the average toward it."""
        live = model.state_dict()
        for key, avg in self.model.state_dict().items():
            w = live[key]
            if self.updates == 0 or not avg.is_floating_point():
                avg.copy_(w)
            else:
                avg.mul_(self.tau).add_(w.to(avg.dtype), alpha=1.0 - self.tau)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "updates": self.updates,
                "model": {k: v.detach().cpu().clone() for k, v in
                          self.model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
