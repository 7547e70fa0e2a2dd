"""The learning-rate schedules of a run, and when each steps.

- ``cyclic`` (the AAER paper's): PyTorch's CyclicLR from --lr-min up to --lr-max at
  --lr-peak of training and back, momentum cycling included, stepped after every
  optimiser step.
- ``multistep``: --lr-max, x0.1 at 1/2 and 3/4 of training, stepped per optimiser step.
- ``onecycle`` (the FastAT Benchmark's, its main.py): PyTorch's OneCycleLR with
  ``max_lr`` --lr-max over ``total_steps`` = the epochs, torch's other defaults (warm-up
  share ``pct_start`` = --lr-peak, cosine annealing, lr from max/25 down to max/25e4,
  momentum cycling 0.95 -> 0.85 -> 0.95, which overrides --momentum), stepped ONCE PER
  EPOCH after the epoch's last batch, as the benchmark's loops do: one lr per epoch.
"""
from __future__ import annotations

from typing import Any

import torch

# schedules stepped once per epoch; the others after every optimiser step
PER_EPOCH = ("onecycle",)


class Schedule:
    """A torch lr scheduler and its cadence: ``after_step`` / ``after_epoch`` step it when
    its schedule says so."""

    def __init__(self, opt, cfg, total_steps: int):
        """``cfg``: the run's optim settings; ``total_steps``: optimiser steps of the run."""
        self.name = cfg.lr_schedule
        self.per_epoch = self.name in PER_EPOCH
        if self.name == "cyclic":
            up = total_steps * cfg.lr_peak
            self.sched = torch.optim.lr_scheduler.CyclicLR(
                opt, base_lr=cfg.lr_min, max_lr=cfg.lr_max, step_size_up=up,
                step_size_down=total_steps - up)
        elif self.name == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr_max, total_steps=cfg.epochs, pct_start=cfg.lr_peak)
        else:
            self.sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=[total_steps * 0.5, total_steps * 0.75], gamma=0.1)

    def after_step(self) -> None:
        if not self.per_epoch:
            self.sched.step()

    def after_epoch(self) -> None:
        if self.per_epoch:
            self.sched.step()

    def lr(self) -> float:
        """The learning rate of the last optimiser step."""
        return self.sched.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)


def make_scheduler(opt, cfg, total_steps: int):
    """The torch scheduler of a run's optim settings (``Schedule(...).sched``)."""
    return Schedule(opt, cfg, total_steps).sched
