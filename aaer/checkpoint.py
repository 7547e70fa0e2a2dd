"""Checkpoints that resume a run exactly, and the signals that ask for one.

A checkpoint is written after every epoch and, on SIGTERM/SIGINT, between two steps (the
step in flight finishes first). It holds everything the rest of the run depends on: the
network, optimiser, schedule, method state, the loader's position in its epoch, every RNG
state (python, numpy, torch CPU and CUDA), the partial epoch sums and the metrics so far.
Resuming from it on the same device and software gives bitwise the same weights as a run
that was never stopped.

Files are written to a temporary file in the run directory, fsynced, renamed over
checkpoint.pt and the directory is fsynced, so checkpoint.pt is always the last complete
checkpoint. A checkpoint is never written from non-finite weights. Everything is loaded
with ``torch.load(weights_only=True)``: a checkpoint cannot execute code.
"""
from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import numpy as np
import torch

from aaer.io import atomic_torch_save

FORMAT = "aaer-checkpoint/1"
CHECKPOINT = "checkpoint.pt"
EXIT_DIVERGED = 3


class TrainingInterrupted(Exception):
    """A stop signal arrived; the run was checkpointed and can be resumed."""

    def __init__(self, signum: int, out_dir: str, epoch: int, step: int):
        self.signum, self.out_dir, self.epoch, self.step = signum, out_dir, epoch, step
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} in epoch {epoch} after step {step}; "
                         f"checkpoint written to {os.path.join(out_dir, CHECKPOINT)}. "
                         f"Continue with: aaer train --resume {out_dir}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or weight: training stopped, the last good checkpoint is kept."""


# -- RNG states --------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every global RNG state a training step can draw from, in weights_only-safe types."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> list[str]:
    """Restore what ``rng_state`` saved; returns warnings (e.g. a different GPU count)."""
    notes = []
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            notes.append(f"the checkpoint holds the RNG states of {len(cuda)} CUDA device(s), "
                         f"this machine has {have}: CUDA random draws will differ from an "
                         "uninterrupted run")
    return notes


# -- files -------------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def all_finite(tensors) -> bool:
    """True when every floating tensor is finite (one host sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def write_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``state`` (temp file + fsync + rename + dir fsync)."""
    atomic_torch_save(path, {"format": FORMAT, **state})
    _fsync_dir(path)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a training checkpoint with weights_only=True; clear errors for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or pickled code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path}: {first} (only files written by "
                         "aaer, loadable with torch.load(weights_only=True), are accepted)")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an aaer training checkpoint (format {found!r}; "
                         f"valid: {FORMAT!r})")
    return state


# -- signals -----------------------------------------------------------------------------

class StopSignal:
    """SIGTERM/SIGINT become a request to stop after the current step.

    A second signal stops at once (KeyboardInterrupt); the last checkpoint is kept.
    Outside the main thread signals cannot be caught, and nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: "
                                    "stopping without a new checkpoint")
        self.signum, self.received_at = signum, time.time()

    @property
    def requested(self) -> bool:
        return self.signum is not None


# -- resume -------------------------------------------------------------------------------

def config_from_run(run_dir: str):
    """The TrainConfig a run directory was started with (from its config.json)."""
    import json
    from dataclasses import fields

    from aaer.train import TrainConfig

    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--resume {run_dir!r}: no such run directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {run_dir!r}: no config.json there, so it is not a "
                                "run directory written by `aaer train`")
    with open(path) as f:
        saved = json.load(f)
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def resume(run_dir: str, *, device: str | None = None, data_dir: str | None = None,
           download: bool | None = None, on_nan: str | None = None,
           progress: bool | None = None, dataset=None):
    """Continue the run in ``run_dir`` from its checkpoint.pt; returns its results.

    Only where the data live, the device, --on-nan and the progress bar may change; every
    other setting comes from the run's config.json.
    """
    from aaer.train import train

    cfg = config_from_run(run_dir)
    cfg.out_dir = run_dir
    for name, value in (("device", device), ("data_dir", data_dir), ("download", download),
                        ("on_nan", on_nan), ("progress", progress)):
        if value is not None:
            setattr(cfg, name, value)
    return train(cfg, dataset, resume=True)
