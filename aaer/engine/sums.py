"""What one epoch has added up so far: loss, correct predictions, the method's statistics.

The sums stay on the device (no host sync per step); the trainer reads them once, at the
end of the epoch. The same small type is what a mid-epoch checkpoint (a stop signal, a
probe that became a rollback point) saves and what a resume puts back, so a resumed epoch
reports exactly what an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass
class EpochSums:
    """Running sums of one epoch (device tensors) and its counters."""

    loss: Tensor
    correct: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    n: int = 0                     # examples whose step counted
    seconds: float = 0.0           # training seconds of this epoch before the current start
    skipped: int = 0               # steps skipped with --on-nan skip-batch

    @classmethod
    def zero(cls, device) -> "EpochSums":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def add(self, out, y: Tensor) -> None:
        """One step's output (aaer.methods.StepOutput) for labels ``y``."""
        b = y.shape[0]
        self.n += b
        self.loss += out.loss.detach().float() * b
        self.correct += (out.logits.argmax(1) == y).sum()
        for k, v in out.stats.items():
            self.stats[k] = self.stats[k] + v if k in self.stats else v.detach().clone()

    def state_dict(self, seconds: float) -> dict[str, Any]:
        """For a checkpoint inside the epoch, ``seconds`` into it (host copies)."""
        return {"loss_sum": self.loss.detach().cpu(), "correct": self.correct.detach().cpu(),
                "stat_sums": {k: v.detach().cpu() for k, v in self.stats.items()},
                "n_seen": self.n, "seconds": float(seconds), "skipped": self.skipped}

    @classmethod
    def from_state(cls, state: dict[str, Any], device) -> "EpochSums":
        return cls(state["loss_sum"].to(device), state["correct"].to(device),
                   {k: v.to(device) for k, v in state["stat_sums"].items()},
                   int(state["n_seen"]), float(state["seconds"]), int(state.get("skipped", 0)))

    def reduced(self, all_reduce) -> "EpochSums":
        """The sums over every process (``all_reduce`` sums a flat float64 tensor in place);
        one collective for everything, vector statistics included."""
        parts = [self.loss.reshape(1), self.correct.reshape(1),
                 torch.tensor([float(self.n)], device=self.loss.device)]
        keys = sorted(self.stats)
        parts += [self.stats[k].reshape(-1) for k in keys]
        flat = torch.cat([p.detach().double() for p in parts])
        all_reduce(flat)
        stats, at = {}, 3
        for k in keys:
            size = self.stats[k].numel()
            stats[k] = flat[at:at + size].reshape(self.stats[k].shape)
            at += size
        return EpochSums(flat[0], flat[1], stats, int(flat[2].item()), self.seconds,
                         self.skipped)

    def host_stats(self) -> dict[str, Any]:
        """The statistics as floats (vectors as lists), for the method's ``summarize``."""
        return {k: v.tolist() if v.dim() else float(v) for k, v in self.stats.items()}
