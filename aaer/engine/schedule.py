"""The learning-rate schedules a run can use, stepped once per optimiser step."""
from __future__ import annotations

import torch


def make_scheduler(opt, cfg, total_steps: int):
    """Per-iteration schedule with PyTorch's CyclicLR semantics (momentum cycling included).
    ``cfg``: the run's optim settings."""
    if cfg.lr_schedule == "cyclic":
        up = total_steps * cfg.lr_peak
        return torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=cfg.lr_min, max_lr=cfg.lr_max, step_size_up=up,
            step_size_down=total_steps - up)
    return torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[total_steps * 0.5, total_steps * 0.75], gamma=0.1)
