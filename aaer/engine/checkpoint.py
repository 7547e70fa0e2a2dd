"""What an exact resume needs besides the weights: every RNG state, and the signals that
ask for a checkpoint.

A checkpoint (written by the trainer through aaer.runs.RunDir after every epoch and, on
SIGTERM/SIGINT, between two steps) holds the network, optimiser, schedule, method state,
the loader's position in its epoch, the RNG states below, the partial epoch sums and the
metrics so far. Resuming from it on the same device and software gives bitwise the same
weights as a run that was never stopped. It is never written from non-finite weights.
"""
from __future__ import annotations

import random
import signal
import time
from typing import Any

import numpy as np
import torch

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


# -- weights -----------------------------------------------------------------------------

def all_finite(tensors) -> bool:
    """True when every floating tensor is finite (one host sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


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
