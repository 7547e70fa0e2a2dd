"""The CO monitor's restore points: the best probe's weights, and the state a rollback
returns to.

- The best probe (weights, optimiser state and, with --weight-average, the averaged
  model): ``--on-co stop`` ends training with it, and so does a run that diverges after a
  rollback strengthened its method. Kept in memory and in best_probe.pt.
- The rewind point (``--on-co rollback``): the whole training state of the best probe (the
  start of training before any probe), everything a checkpoint holds. Kept in memory and in
  rewind.pt. A probe at an epoch's end becomes the rewind point only once the epoch's
  metrics row is recorded, so that going back to it keeps that row (``pending``).

Under data parallelism every process keeps its own copies in memory (its own RNG and loader
state); the files are rank 0's, with every rank's RNG states (see aaer.engine.trainer).
"""
from __future__ import annotations

import copy
from typing import Any, Callable


class RestorePoints:
    def __init__(self, run, *, write: bool, rolls_back: bool):
        self.run, self.write, self.rolls_back = run, write, rolls_back
        self.best: dict[str, Any] | None = None
        self.rewind: dict[str, Any] | None = None
        self.pending = False          # the epoch's probe was the best: keep it once recorded

    def keep_best(self, record: dict[str, Any], model, opt, averaged=None) -> None:
        self.best = {
            "epoch": record["epoch"], "step": record["step"], "probe": dict(record),
            "model": {k: v.detach().to("cpu", copy=True)
                      for k, v in model.net.state_dict().items()},
            "optimizer": copy.deepcopy(opt.state_dict()),
        }
        if averaged is not None:
            self.best["averaged"] = averaged.state_dict()
        if self.write:
            self.run.save_best_probe(self.best)

    def after_best(self, state: Callable[[], dict[str, Any]], *, epoch_end: bool) -> None:
        """A new best probe: with --on-co rollback it is the point to return to (now, or
        at an epoch's end once the epoch is recorded)."""
        if not self.rolls_back:
            return
        if epoch_end:
            self.pending = True
        else:
            self.keep_rewind(state())

    def epoch_recorded(self, state: Callable[[], dict[str, Any]]) -> None:
        if self.pending:
            self.keep_rewind(state())

    def keep_rewind(self, state: dict[str, Any]) -> None:
        self.pending = False
        self.rewind = copy.deepcopy(state)
        if self.write:
            self.run.save_rewind(self.rewind)

    def restore_best(self, model, averaged=None) -> None:
        """The best probe's weights back (the optimiser and schedule stay put: training
        ends with them)."""
        if self.best is None:          # only after a resume that lost best_probe.pt
            raise RuntimeError("CO flagged but the best probe's weights are not available "
                               "(best_probe.pt is missing from the run directory)")
        model.net.load_state_dict(self.best["model"])
        if averaged is not None and "averaged" in self.best:
            averaged.load_state_dict(self.best["averaged"])

    def load(self) -> None:
        """A resumed run: the points its files hold."""
        self.best = self.run.best_probe()
        if self.rolls_back:
            self.rewind = self.run.rewind_point()
