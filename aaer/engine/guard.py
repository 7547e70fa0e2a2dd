"""Divergence guard: what happens when the training loss stops being a finite number.

``--on-nan stop`` (default) records, on the device, the first step whose loss is not
finite and reads that record every ``CHECK_EVERY`` steps and at the end of the epoch: one
host sync per 50 steps, so the loop stays asynchronous. Once the loss is NaN the weights
are too, so at most CHECK_EVERY steps are wasted; checkpoints are written only after the
check (and only from finite weights), so checkpoint.pt stays the last good state.

``--on-nan skip-batch`` checks every step after the backward pass, before the optimiser
step: one host sync per step (on a GPU typically a few percent of the step time; nothing
on a CPU) plus a norm over all gradients. A step whose loss or gradient is not finite is
skipped: no optimiser step, the BatchNorm running statistics are put back to what they
were before its forward passes (a copy of the BN buffers per step, small next to the
weights), and the learning-rate schedule still advances, so the schedule stays in step
with the iteration count. Skipped batches do not enter the epoch's metrics; the epoch's
metrics line counts them (aaer.engine.sums.EpochSums.skipped).
"""
from __future__ import annotations

import torch

from aaer.config.schema import SETTINGS
from aaer.errors import TrainingDiverged

CHECK_EVERY = 50


class NanGuard:
    def __init__(self, mode: str, device, check_every: int = CHECK_EVERY):
        mode = SETTINGS["runtime.on_nan"].check(mode)
        self.mode, self.device, self.check_every = mode, device, check_every
        self.reset()

    def reset(self) -> None:
        """Start an epoch: no bad step seen."""
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.bad_value = torch.zeros((), device=self.device)

    # -- stop -----------------------------------------------------------------------
    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record (on the device, no sync) the first step whose loss is not finite."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_value = torch.where(bad, loss.detach().float(), self.bad_value)

    def due(self, step: int) -> bool:
        return (step + 1) % self.check_every == 0

    def error(self, epoch: int, last_good: str) -> TrainingDiverged | None:
        """The error to stop with if a non-finite loss was recorded (one host sync)."""
        step = int(self.first_bad)
        if step < 0:
            return None
        return TrainingDiverged(
            f"training diverged: the loss became {float(self.bad_value)} at epoch {epoch}, "
            f"step {step}. Stopped; {last_good}. Lower --lr-max or the regulariser "
            "weights, or resume with --on-nan skip-batch to skip such steps")

    # -- skip-batch -----------------------------------------------------------------
    def snapshot(self, model: torch.nn.Module) -> list[torch.Tensor] | None:
        """The buffers a forward pass changes (BN statistics), before the step."""
        if self.mode != "skip-batch":
            return None
        return [b.detach().clone() for b in model.buffers()]

    def step_ok(self, loss: torch.Tensor, params) -> bool:
        """After backward: are the loss and every gradient finite? (one host sync)"""
        grads = [p.grad for p in params if p.grad is not None]
        flags = [torch.isfinite(loss.detach()).all()]
        if grads:
            flags.append(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
        return bool(torch.stack(flags).all())

    def skip(self, model: torch.nn.Module, buffers: list[torch.Tensor], opt) -> None:
        """Undo a bad step's side effects: BN statistics back, gradients dropped."""
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        opt.zero_grad(set_to_none=True)
