"""The one training loop: schedule, seeds, per-epoch metrics, checkpoints.

It knows nothing about any one method: it asks ``method.step`` for a loss
``method.replays`` times per minibatch, steps SGD and the scheduler after each, and adds
up the method's device-resident statistics, reading them once per epoch. What a method may
ask of the loop it declares: per-example state (``memory_spec``: kept by training-set
index, checkpointed), a perturbation of the weights inside its step (``ctx.weights``: put
back before the optimiser step, or left in), the engine's averaged model
(``uses_averaged_model``, --weight-average). It knows no CO rule and no evaluation protocol
either: the door (aaer.training) hands it a monitor, whose decisions it applies (continue,
warn, stop, roll back with a named change the method makes), a final evaluation to call,
and listeners (TensorBoard, W&B) that hear each epoch and probe, and the results.
Everything it writes goes through the run directory (aaer.runs.RunDir).

Read ``fit`` and ``run_epoch`` first: one epoch, top to bottom, returns how it ended
(``EpochEnd``); the parts below them (a step, a probe and the monitor's decision, a
rollback, a checkpoint) each do one thing.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch

from aaer import __version__
from aaer.config import SETTINGS, RunConfig
from aaer.config.resolve import method_kwargs
from aaer.config.settings import Source
from aaer.engine import distributed
from aaer.engine.averaging import AveragedModel
from aaer.engine.checkpoint import StopSignal, all_finite, rng_state, set_rng_state
from aaer.engine.environment import (close_logger, environment, make_logger, peak_memory,
                                     progress_bar, reset_peak_memory, resolve_device,
                                     seed_everything, silent_logger, timed)
from aaer.engine.guard import NanGuard
from aaer.engine.precision import (Precision, check_compile_mode, make_sgd, maybe_compile,
                                   use_channels_last)
from aaer.engine.preflight import data_fingerprint
from aaer.engine.restore import RestorePoints
from aaer.engine.schedule import Schedule
from aaer.engine.sums import EpochSums
from aaer.errors import TrainingDiverged, TrainingInterrupted, signal_name
from aaer.methods import Method, StepContext, create_method
from aaer.methods.base import ExampleMemory, Weights
from aaer.runs import CHECKPOINT, Row, RunDir

# a loader that keeps the model waiting more than this share of an epoch gets a warning
STARVED = 0.3

# how an epoch ended
FINISHED, STOPPED, REWOUND, INTERRUPTED, DIVERGED = (
    "finished", "stopped", "rewound", "interrupted", "diverged")


class Clock:
    """Training seconds of a run across resumes (what its checkpoints say it trained) and
    rollbacks (whose discarded epochs count: they were trained)."""

    def __init__(self):
        self.before, self.since = 0.0, time.time()

    def start(self) -> None:
        self.since = time.time()

    def seconds(self) -> float:
        return self.before + time.time() - self.since


@dataclass
class EpochEnd:
    """How ``run_epoch`` ended: ``finished`` (train on), ``stopped`` (the monitor ended
    training), ``rewound`` (a rollback: train on from ``epoch``), ``interrupted`` (a stop
    signal: checkpointed, ``error`` says how to resume) or ``diverged`` (``error``).
    ``row``: the epoch's metrics row when it was recorded."""

    kind: str
    epoch: int | None = None
    error: Exception | None = None
    row: dict[str, Any] | None = None


class Trainer:
    """One run: builds model, method, loader, optimiser and schedule, then ``fit()``.

    ``cfg``: the resolved run (aaer.config.resolve); ``dataset``: the loaded data set;
    ``run``: its run directory; ``train_set``: (x, y) to train on (default: the data set's
    first --n-train images); ``monitor``: the CO monitor (aaer.monitor.COMonitor) or None;
    ``validator``: the per-epoch validation and model selection (aaer.selection.Validator)
    or None; ``final_eval(model, device, log, shard)``: the evaluation after training, or None
    (under torchrun every process evaluates its share; rank 0 keeps the report);
    ``listeners``: objects with ``epoch(row)``, ``probe(record)`` and ``close()``, and
    optionally ``results(results)`` (called once, with results.json's contents, before
    ``close``).
    """

    resume_sums: EpochSums | None = None     # the epoch a resume or rollback lands inside
    last_good = "no checkpoint was written yet"

    def __init__(self, cfg: RunConfig, dataset, run: RunDir, *, train_set=None, monitor=None,
                 validator=None, final_eval: Callable | None = None, listeners=()):
        from aaer.data import augmentation_for, make_loader, streamed
        from aaer.models import build, input_stats

        self.cfg, self.run, self.dataset = cfg, run, dataset
        self.monitor, self.final_eval, self.listeners = monitor, final_eval, list(listeners)
        self.validator = validator
        rt, opt = cfg.runtime, cfg.optim
        self.dist = distributed.setup_distributed(rt.device, rt.dist_timeout)
        self.is_main = self.dist.is_main
        self.device = self.dist.device if self.dist.enabled else resolve_device(rt.device)
        self.prec = Precision(rt.precision, self.device)
        self.compile_mode = check_compile_mode(rt.compile_mode, self.device)
        self.method: Method = create_method(cfg.method.name, cfg.eps, **method_kwargs(cfg))
        self.method.set_label_smoothing(opt.label_smoothing)
        ds = dataset
        seed_everything(opt.seed)
        if train_set is None:
            n = cfg.data.n_train
            train_set = (ds.train_x[:n], ds.train_y[:n]) if n is not None else \
                (ds.train_x, ds.train_y)
        self.train_x, self.train_y = train_set
        if cfg.monitor.aae_per_class:
            self.method.aae_num_classes = ds.num_classes
        self.input_mean, self.input_std = input_stats(cfg.model.normalization, ds.mean, ds.std,
                                                      ds.in_channels)
        self.model = build(cfg.model.name, ds.num_classes, ds.in_channels, ds.image_size,
                           self.input_mean, self.input_std, cfg.model.kwargs).to(self.device)
        self.channels_last = use_channels_last(rt.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        distributed.reseed_for_rank(opt.seed, self.dist)
        self.pad, self.flip = augmentation_for(ds)
        self.streamed = streamed(ds)
        self.loader = make_loader(self.train_x, self.train_y,
                                  distributed.per_rank_batch(opt.batch_size, self.dist.world_size),
                                  shuffle=True, pad=self.pad, flip=self.flip, device=self.device,
                                  seed=opt.seed, rank=self.dist.rank,
                                  world_size=self.dist.world_size, workers=cfg.data.workers)
        self.total_steps = opt.epochs * len(self.loader) * self.method.replays
        self.opt = make_sgd(self.model.parameters(), rt.sgd_impl, lr=opt.lr_max,
                            momentum=opt.momentum, weight_decay=opt.weight_decay)
        self.sched = Schedule(self.opt, opt, self.total_steps)
        # what a method may ask of the loop: per-example state, its weights, the average
        self.memory = self._example_memory()
        self.weights = Weights(self.model.net, self.opt)
        self.averaged = AveragedModel(self.model, opt.weight_average) \
            if opt.weight_average else None
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        # reliability: stop signals, divergence guard, resume state
        self.stop = StopSignal()
        self.guard = NanGuard(rt.on_nan, self.device)
        self.resumed, self.resumes = False, []
        self.clock = Clock()
        self.points = RestorePoints(run, write=self.is_main, rolls_back=self.rolls_back)
        # seconds to sleep after each step: lets tests interrupt a run at a random step
        self.step_delay = float(os.environ.get("AAER_STEP_DELAY", "0") or 0)
        if self.is_main:
            os.makedirs(run.path, exist_ok=True)
            self.log = make_logger(run.path, run.log_path)
        else:                                    # other ranks write nothing
            self.log = silent_logger(f"aaer.run.rank{self.dist.rank}")
        # step_model is what the method calls: the model, DDP-wrapped and/or compiled;
        # self.model stays the bare Normalized network for evaluation and checkpoints
        self.step_model = self.model
        if self.dist.enabled:
            self.step_model = distributed.wrap_ddp(self.model, self.dist)
        self.compiled = False
        if rt.compile:
            self.step_model = maybe_compile(self.step_model, self.method, self.log,
                                            self.compile_mode)
            self.compiled = not self.method.cost().double_backprop
        self.graphs = self.compiled and self.compile_mode == "reduce-overhead"

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            self.begin()
            epoch = self.start_epoch
            while epoch < self.cfg.optim.epochs and not self.stopped:
                end = self.run_epoch(epoch)
                if end.kind == REWOUND:
                    epoch = end.epoch
                    continue
                if end.kind == INTERRUPTED or \
                        end.kind == DIVERGED and not self.stop_diverged(epoch, end.error):
                    raise end.error
                epoch += 1
            return self.finish()
        except TrainingDiverged as e:
            self.log.error("%s", e)
            raise
        finally:
            self.stop.restore()
            self.close()

    def run_epoch(self, epoch: int) -> EpochEnd:
        """Train epoch ``epoch`` (from where a resume or rollback left it), then probe,
        record and checkpoint it (``end_epoch``)."""
        self.step_model.train()
        self.loader.set_epoch(epoch)
        sums, self.resume_sums = self.resume_sums or EpochSums.zero(self.device), None
        t0 = time.time() - sums.seconds
        self.guard.reset()
        bar = progress_bar(len(self.loader), f"epoch {epoch + 1}/{self.cfg.optim.epochs}",
                           self.cfg.runtime.progress and self.is_main)
        waited = [0.0]                          # seconds spent waiting for batches
        for i, (x, y, index) in enumerate(timed(self.loader.indexed(), waited),
                                          start=self.loader.position):
            out = self.train_step(x, y, self.context(epoch, i, index))
            if out is None:                     # skipped (--on-nan skip-batch)
                sums.skipped += 1
            else:
                self.guard.observe(out.loss, i)
                sums.add(out, y)
            if bar is not None:
                bar.update(1)
            if self.step_delay:
                time.sleep(self.step_delay)
            if self.guard.due(i) and (error := self.divergence(epoch)):
                return EpochEnd(DIVERGED, error=error)
            if self.stop.requested and i + 1 < len(self.loader):
                return self.interrupt(epoch, i + 1, sums.state_dict(time.time() - t0))
            step = epoch * len(self.loader) + i + 1
            if self.monitor is not None and self.monitor.due(step):
                end = self.observe(epoch, step, partial=sums.state_dict(time.time() - t0))
                if end is not None and end.kind == REWOUND:
                    return end
                if self.stopped:
                    break
        if bar is not None:
            bar.close()
        return self.end_epoch(epoch, sums, time.time() - t0, waited[0])

    def end_epoch(self, epoch: int, sums: EpochSums, seconds: float, waited: float) -> EpochEnd:
        """Check, probe, record and checkpoint a trained epoch."""
        if error := self.divergence(epoch):
            return EpochEnd(DIVERGED, error=error)
        if sums.n == 0:
            return EpochEnd(DIVERGED, error=TrainingDiverged(
                f"every step of epoch {epoch} had a non-finite loss or gradient and was "
                f"skipped; {self.last_good}"))
        row = self.epoch_row(epoch, sums, seconds, waited)
        if not math.isfinite(row[Row.TRAIN_LOSS]):
            return EpochEnd(DIVERGED, error=TrainingDiverged(
                f"the training loss became {row[Row.TRAIN_LOSS]} in epoch {epoch}; the "
                f"weights of the previous epoch are in checkpoint.pt. Lower --lr-max or the "
                "regulariser weights"))
        self.sched.after_epoch()                # a per-epoch schedule (its lr is in the row)
        if self.monitor is not None:
            step = (epoch + 1) * len(self.loader)
            if not self.stopped and self.monitor.last_step() != step:
                end = self.observe(epoch, step, row=row)
                if end is not None and end.kind == REWOUND:
                    return end
            row.update(self.monitor.epoch_fields())
        if self.validator is not None:
            row.update(self.validate(epoch))
        self.record(row)
        if error := self.save_checkpoint(epoch):
            return EpochEnd(DIVERGED, error=error)
        if self.stop.requested:                 # the end-of-epoch checkpoint is written
            self.log.info("received %s: stopping after epoch %d; continue with: aaer train "
                          "--resume %s", signal_name(self.stop.signum), epoch, self.run.path)
            return EpochEnd(INTERRUPTED, row=row, error=TrainingInterrupted(
                self.stop.signum, self.run.path, epoch + 1, 0, self.run.file(CHECKPOINT)))
        return EpochEnd(STOPPED if self.stopped else FINISHED, row=row)

    # -- one step -------------------------------------------------------------------------
    def context(self, epoch: int, i: int, index: torch.Tensor) -> StepContext:
        return StepContext(epoch, i, len(self.loader), self.cfg.optim.epochs,
                           batch_sum=distributed.batch_sum if self.dist.enabled else None,
                           index=index, memory=self.memory, weights=self.weights,
                           averaged=self.averaged.model if self.averaged else None)

    def train_step(self, x, y, ctx: StepContext):
        """One minibatch: ``replays`` method steps, each followed by SGD, the average and the
        schedule. None when --on-nan skip-batch skipped it."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = None
        for _ in range(self.method.replays):
            if self.graphs:                     # a new step: CUDA graph outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            buffers = self.guard.snapshot(self.model)   # only with --on-nan skip-batch
            with self.prec.autocast():
                out = self.method.step(self.step_model, x, y, ctx)
            self.opt.zero_grad(set_to_none=True)
            self.prec.backward(out.loss)
            self.weights.restore()            # a perturbation the method asked to undo
            if buffers is not None and not self.guard.step_ok(out.loss, self.model.parameters()):
                self.guard.skip(self.model, buffers, self.opt)
                self.sched.after_step()
                out = None                      # a skipped step: not in the epoch's metrics
                continue
            self.prec.step(self.opt)
            if self.averaged is not None:
                self.averaged.update(self.model)
            self.sched.after_step()
        return out

    def epoch_row(self, epoch: int, sums: EpochSums, seconds: float, waited: float):
        """The epoch's metrics row (one all-reduce of the sums under DDP)."""
        if self.dist.enabled:
            sums = sums.reduced(torch.distributed.all_reduce)
        share = waited / max(seconds, 1e-9)
        if share > STARVED and seconds > 1.0:
            self.log.warning("the data loader starved the model: %.0f%% of epoch %d went to "
                             "waiting for batches; give the loader more --workers (or a "
                             "faster disk)", 100 * share, epoch)
        skipped = {Row.SKIPPED: sums.skipped} if self.cfg.runtime.on_nan == "skip-batch" else {}
        return {Row.EPOCH: epoch, Row.SECONDS: round(seconds, 3),
                Row.LR: self.sched.lr(),
                Row.TRAIN_LOSS: float(sums.loss) / sums.n,
                Row.TRAIN_ACC: float(sums.correct) / sums.n, Row.N: sums.n,
                **self.method.summarize(sums.host_stats(), sums.n), **skipped,
                Row.IMAGES_PER_S: round(sums.n / max(seconds, 1e-9), 1),
                Row.DATA_WAIT: round(share, 4)}

    def record(self, row: dict[str, Any]) -> None:
        """A finished epoch's row: into the history, metrics.jsonl, the log, the listeners."""
        self.history.append(row)
        self.points.epoch_recorded(lambda: self.full_state(row[Row.EPOCH]))
        if self.is_main:
            self.run.append_metrics(row)
            for listener in self.listeners:
                listener.epoch(row)
        self.log.info("%s", self.log_line(row))

    # -- the CO monitor's decisions ---------------------------------------------------------
    @property
    def rolls_back(self) -> bool:
        return self.monitor is not None and self.monitor.on_co == "rollback"

    @property
    def stopped(self) -> bool:
        """Has the monitor ended training (a stop at CO, or a divergence after a rollback)?"""
        return self.monitor is not None and self.monitor.stopped is not None

    @property
    def eval_model(self):
        """What the probe, the final evaluation and model.pt use (--eval-model)."""
        return self.averaged.model if self.cfg.evaluation.model == "averaged" else self.model

    def observe(self, epoch: int, step: int, *, partial: dict[str, Any] | None = None,
                row: dict[str, Any] | None = None) -> EpochEnd | None:
        """Probe now and do what the monitor decides: between two steps (``partial``: the
        epoch's sums so far) or at an epoch's end (``row``: its metrics row, discarded with
        it by a rollback). Returns how the epoch ends (stopped, rewound), or None."""
        if self.dist.enabled:       # every process probes rank 0's model: one decision
            distributed.broadcast_buffers(self.eval_model)
        last = step == self.cfg.optim.epochs * len(self.loader)
        decision = self.monitor.probe(self.eval_model, epoch, step, last=last)
        for level, message in decision.messages:
            self.log.log(level, message)
        if decision.new_best:
            self.points.keep_best(decision.record, self.model, self.opt, self.averaged)
            self.points.after_best(lambda: self.full_state(epoch, partial),
                                   epoch_end=partial is None)
        if self.is_main:
            if self.monitor.every_steps:        # every probe, also the epochs' last
                self.run.append_probe(decision.record)
            for listener in self.listeners:
                listener.probe(decision.record)
        if decision.action == "stop":
            if decision.restore:
                self.points.restore_best(self.model, self.averaged)
            return EpochEnd(STOPPED)
        if decision.action == "rollback":
            return self.rewind(decision, epoch + (step - epoch * len(self.loader)) /
                               len(self.loader), row)
        return None

    def rewind(self, decision, position: float, row: dict[str, Any] | None) -> EpochEnd:
        """Roll back: the whole state of the rewind point (weights, optimiser, schedule,
        the loader's position and RNG, every RNG, the epoch's sums, the metrics, the
        method's memory, the averaged model and the monitor's probes) comes back; the monitor
        keeps its CO events and rollbacks; the method is strengthened as it declares;
        training goes on from there."""
        target = self.points.rewind
        if target is None:
            raise RuntimeError("CO flagged but the state to roll back to is not available "
                               "(rewind.pt is missing from the run directory)")
        kept = self.monitor.state_dict()
        discarded = self.history[len(target["history"]):]
        if row is not None:                     # the epoch whose probe confirmed CO
            discarded.append({**row, **Row.probe_fields(decision.record), Row.CO_FLAG: True})
        back_to = target["epoch"] + 1 if target["partial"] is None else \
            target["epoch"] + target["loader"]["position"] / len(self.loader)
        self.restore(copy.deepcopy(target))   # loading consumes parts of it (CyclicLR's state)
        self.monitor.rewound(kept)
        for change in self.monitor.rollbacks:          # every earlier rollback's change
            self.method.apply_change(change)
        change = self.method.strengthen(decision.change, decision.factors)
        self.log.warning("%s", self.monitor.rolled_back(
            change, epochs_discarded=round(position - back_to, 6), rows_discarded=discarded))
        if self.is_main:
            self.run.write_metrics(self.history)
        partial = target["partial"]
        if error := self.save_checkpoint(target["epoch"], partial):
            return EpochEnd(DIVERGED, error=error)
        return EpochEnd(REWOUND, epoch=self.start_epoch)

    def stop_diverged(self, epoch: int, error: TrainingDiverged) -> bool:
        """Training diverged after a rollback strengthened the method: stop with the best
        probe's weights, and let the run end (model.pt, evaluation, results.json) saying
        it was not rescued. False (the error stands) for any other divergence."""
        if not (self.rolls_back and self.monitor.rollbacks and self.points.best is not None):
            return False
        self.log.error("%s", error)
        self.points.restore_best(self.model, self.averaged)
        self.log.warning("%s", self.monitor.diverged(epoch))
        return True

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validate the epoch's weights; keep them when they become the selected model."""
        averaged = self.averaged.model if self.averaged is not None else None
        if self.dist.enabled:       # every process validates rank 0's models: one decision
            for m in (self.model, averaged):
                if m is not None:
                    distributed.broadcast_buffers(m)
        fields, chosen = self.validator.validate(epoch, self.model, averaged)
        if chosen is not None:
            self.validator.keep(epoch, chosen, (averaged if chosen == "averaged" else
                                                self.model).net)
        return fields

    def divergence(self, epoch: int) -> TrainingDiverged | None:
        """The guard's error if a non-finite loss was seen (by any process)."""
        error = self.guard.error(epoch, self.last_good)
        if self.dist.enabled and distributed.any_rank(error is not None, self.device) \
                and error is None:
            error = TrainingDiverged(f"training diverged in epoch {epoch}: another process "
                                     f"saw a non-finite loss; {self.last_good}")
        return error

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resume needs. ``epoch``: the last finished epoch, or with ``partial``
        (``EpochSums.state_dict`` of the epoch in progress) the epoch the loader is inside."""
        state = {"epoch": epoch, "model": self.model.net.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "method": self.method.state_dict(), "loader": self.loader.state_dict(),
                 "partial": partial, "rng": rng_state(), "history": list(self.history),
                 "train_seconds": self.clock.seconds(),
                 "resumes": list(self.resumes), "config": self.cfg.to_dict(),
                 "data": {"n_train": int(self.train_x.shape[0]),
                          "shape": list(self.train_x.shape[1:]),
                          "num_classes": self.dataset.num_classes, "sha256": self.data_sha256},
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "aaer": __version__,
                 "precision": self.prec.state_dict()}
        if self.monitor is not None:
            state["monitor"] = self.monitor.state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        if self.averaged is not None:
            state["averaged"] = self.averaged.state_dict()
        if self.validator is not None:
            state["validator"] = self.validator.state_dict()
        return state

    def full_state(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """``state_dict`` with every process's RNG states (under DDP each process draws its
        own noise; a resume gives each its own back). Every process must call it."""
        state = self.state_dict(epoch, partial)
        if self.dist.enabled:
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
        return state

    def save_checkpoint(self, epoch: int, partial: dict[str, Any] | None = None
                        ) -> TrainingDiverged | None:
        """Atomically replace checkpoint.pt, never with non-finite weights (then the error
        is returned). Every process must call it."""
        finite = all_finite(list(self.model.parameters()) + list(self.model.buffers()))
        if self.dist.enabled:
            finite = not distributed.any_rank(not finite, self.device)
        if not finite:
            return TrainingDiverged(f"training diverged: the weights became non-finite in "
                                    f"epoch {epoch}; checkpoint.pt was not overwritten "
                                    f"({self.last_good}). Lower --lr-max or the regulariser "
                                    "weights")
        state = self.full_state(epoch, partial)
        if self.is_main:
            self.run.write_checkpoint(state)
        where = f"end of epoch {epoch}" if partial is None else \
            f"epoch {epoch} after step {self.loader.position}"
        self.last_good = f"checkpoint.pt holds the last good state ({where})"
        return None

    def interrupt(self, epoch: int, step: int, partial: dict[str, Any]) -> EpochEnd:
        """A stop signal arrived: checkpoint between steps, then stop."""
        error = self.divergence(epoch) or self.save_checkpoint(epoch, partial)
        if error:                              # never checkpoint a diverged state
            return EpochEnd(DIVERGED, error=error)
        name = signal_name(self.stop.signum)
        self.log.info("received %s: checkpoint written in epoch %d after step %d; continue "
                      "with: aaer train --resume %s", name, epoch, step, self.run.path)
        return EpochEnd(INTERRUPTED, error=TrainingInterrupted(
            self.stop.signum, self.run.path, epoch, step, self.run.file(CHECKPOINT)))

    def restore(self, ckpt: dict[str, Any]) -> list[str]:
        """Put the training state of ``ckpt`` (a checkpoint or a rewind point) back: weights,
        optimiser, schedule, method state and memory, the averaged model, the monitor, the
        loader's position, the metrics, the epoch's partial sums and, last, every RNG state.
        Returns the RNG notes."""
        from aaer.models import load_state_dict_into
        load_state_dict_into(self.model.net, ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.method.load_state_dict(ckpt["method"])
        if self.memory is not None:
            self.memory.load_state_dict(ckpt["memory"])
        if self.averaged is not None:
            self.averaged.load_state_dict(ckpt["averaged"])
        if self.validator is not None:
            self.validator.load_state_dict(ckpt["validator"])
        if "precision" in ckpt:
            self.prec.load_state_dict(ckpt["precision"])
        if self.monitor is not None and "monitor" in ckpt:
            self.monitor.load_state_dict(ckpt["monitor"])
            for change in self.monitor.rollbacks:     # the changes rollbacks made
                self.method.apply_change(change)
        self.loader.load_state_dict(ckpt["loader"])
        self.history = list(ckpt["history"])
        partial = ckpt["partial"]
        self.resume_sums = None if partial is None else EpochSums.from_state(partial, self.device)
        self.start_epoch = ckpt["epoch"] + (1 if partial is None else 0)
        rng = ckpt["rng_ranks"][self.dist.rank] if self.dist.enabled and "rng_ranks" in ckpt \
            else ckpt["rng"]
        return set_rng_state(rng)                 # last: nothing may draw before training

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` (exact resume)."""
        notes = self.restore(ckpt)
        if self.monitor is not None and "monitor" in ckpt:
            self.points.load()
        self.clock.before = float(ckpt["train_seconds"])
        self.resumed = True
        step = self.loader.position if self.resume_sums is not None else 0
        self.resumes = list(ckpt["resumes"]) + [{
            "epoch": self.start_epoch, "step": step, "checkpoint_saved_at": ckpt["saved_at"],
            "resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(self.device)}]
        # metrics.jsonl may hold a line written after the checkpoint (killed in between)
        if self.is_main:
            self.run.write_metrics(self.history)
        self.last_good = (f"checkpoint.pt holds the last good state (epoch {self.start_epoch}"
                          f", step {step})")
        self.log.info("resumed from %s at epoch %d, step %d (checkpoint of %s) on %s",
                      self.run.file(CHECKPOINT), self.start_epoch, step, ckpt["saved_at"],
                      self.device)
        for note in notes:
            self.log.warning(note)

    # -- start and end ----------------------------------------------------------------------
    def built(self) -> dict[str, Any]:
        """What the settings built (config.json, next to the settings and their sources)."""
        ds, method = self.dataset, self.method
        return {
            "method_resolved": {"name": method.name, **method.hparams(),
                                "cost_per_step": method.cost().as_dict(),
                                "replays": method.replays},
            "data": {"name": ds.name, "source": getattr(ds, "source", None),
                     "n_train": int(self.train_x.shape[0]), "n_test": int(ds.test_x.shape[0]),
                     "shape": list(self.train_x.shape[1:]), "num_classes": ds.num_classes,
                     "mean": list(ds.mean), "std": list(ds.std),
                     "augmentation": {"random_resized_crop": int(self.train_x.shape[2]),
                                      "hflip": True, "test": "resize + center crop",
                                      "streamed": True} if self.streamed else
                     {"crop_pad": self.pad, "hflip": self.flip}},
            "model_params": sum(p.numel() for p in self.model.parameters()),
            # what the model's normalisation layer subtracts and divides by (--normalization)
            "model_input": {"normalization": self.cfg.model.normalization,
                            "mean": list(self.input_mean), "std": list(self.input_std)},
            "iters_per_epoch": len(self.loader), "total_steps": self.total_steps,
            "environment": environment(self.device),
            "performance": {"precision": self.prec.name, "channels_last": self.channels_last,
                            "compile": self.compiled,
                            "compile_mode": self.compile_mode if self.compiled else None,
                            "sgd_impl": self.cfg.runtime.sgd_impl,
                            "data_on_device": self.loader.on_device,
                            "world_size": self.dist.world_size,
                            "backend": self.dist.backend,
                            "batch_per_process": self.loader.batch_size},
        }

    def start(self) -> None:
        """A fresh run: clear what an earlier run left, write config.json, log the set-up."""
        if not self.is_main:
            return
        self.run.start()
        self.run.write_config(self.cfg, self.built())
        for path, source in self.cfg.sources.items():
            if Source.of(source).kind not in Source.QUIET and path.count(".") == 1:
                self.log.info("%s %s: %s", SETTINGS[path].flag, self.cfg.get(path), source)
        self.log.info("method %s %s | model %s (%d params) | data %s: %d train, %d test | "
                      "device %s", self.method.name, self.method.hparams(), self.cfg.model.name,
                      sum(p.numel() for p in self.model.parameters()), self.dataset.name,
                      self.train_x.shape[0], self.dataset.test_x.shape[0], self.device)
        if self.method.smoothing:
            self.log.info("label smoothing %g: every cross-entropy on the true labels in the "
                          "%s step (attack, regulariser, training loss); Train Loss is the "
                          "smoothed loss", self.method.smoothing, self.method.name)
        self.log.info("%s", " \t ".join(["Epoch", "Seconds", "LR", "Train Loss", "Train Acc"] +
                                         [h for h, _, _ in self.method.log_columns]))

    def begin(self) -> None:
        """Before the first epoch of this process: a fresh run starts (``start``), stop
        signals are caught, and a rollback run keeps the start of training as its first
        rewind point (CO before any good probe)."""
        if self.start_epoch == 0 and not self.resumed:
            self.start()
        self.stop.install()
        reset_peak_memory(self.device)
        self.clock.start()
        if self.rolls_back and self.points.rewind is None and not self.resumed:
            self.points.keep_rewind(self.full_state(-1))

    def log_line(self, row: dict[str, Any]) -> str:
        """The epoch's line of train.log: the reference's columns, the method's own, the
        probe, the speed."""
        cols = [f"{row[Row.EPOCH]:d}", f"{row[Row.SECONDS]:.1f}", f"{row[Row.LR]:.4f}",
                f"{row[Row.TRAIN_LOSS]:.4f}", f"{row[Row.TRAIN_ACC]:.4f}"]
        cols += [fmt % row.get(key, 0) for _, key, fmt in self.method.log_columns]
        probe = "".join(f" | {k} {row[k]:.4f}" for k in Row.LOGGED if k in row)
        return (" \t ".join(cols) + probe + f" | {row[Row.IMAGES_PER_S]:.0f} img/s, "
                f"{100 * row[Row.DATA_WAIT]:.0f}% waiting for data")

    def finish(self) -> dict[str, Any]:
        """Training is over: model.pt, the final evaluation and results.json."""
        self.stop.restore()                 # evaluation may be stopped at once
        train_seconds = self.clock.seconds()
        if self.is_main:
            self.run.save_model(self.eval_model.net.state_dict())
        self.log.info("Total train time: %.4f minutes", train_seconds / 60)
        # train_seconds covers every epoch run so far, resumed and rolled-back ones included
        epochs_run = self.history[-1][Row.EPOCH] + 1 if self.history else self.cfg.optim.epochs
        if self.monitor is not None:
            epochs_run += self.monitor.epochs_discarded()
        results: dict[str, Any] = {
            "train_seconds": round(train_seconds, 3),
            "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 3),
            "epochs": self.cfg.optim.epochs, "epochs_trained": round(epochs_run, 6),
            "final_epoch": self.history[-1], "evaluated_model": self.cfg.evaluation.model}
        results["cost"] = self.cost(train_seconds)
        if self.resumes:
            results["resumes"] = self.resumes
        if self.monitor is not None:
            results["monitor"] = self.monitor.summary()
        report = self.evaluate_final(self.eval_model)
        if report is not None:
            results["evaluation"] = report
        if self.validator is not None:
            results["validation"] = self.validator.summary()
            selected = self.selected_model()
            if selected is not None:
                if self.is_main:
                    self.run.save_selected(selected.net.state_dict())
                report = self.evaluate_final(selected, which="selected")
                if report is not None:
                    results["evaluation_selected"] = report
        if self.is_main:
            self.run.write_results(results)
            for listener in self.listeners:       # the optional hook: the final results
                if hasattr(listener, "results"):
                    listener.results(results)
        return results

    def selected_model(self):
        """The model the validation split selected (--select best-val-pgd), or None."""
        best = self.validator.best
        if self.cfg.evaluation.select != "best-val-pgd" or best is None:
            return None
        model = copy.deepcopy(self.model)
        model.net.load_state_dict(best["weights"])
        return model.eval()

    def cost(self, train_seconds: float) -> dict[str, Any]:
        """What the training cost: wall seconds (all epochs trained, resumed and rolled-back
        ones included), device hours (seconds x processes), images per second of the kept
        epochs, and the peak memory of this process (since this start)."""
        kept = [r for r in self.history if r.get(Row.SECONDS)]
        images = sum(r[Row.N] for r in kept)          # rows count the global batch
        return {"train_seconds": round(train_seconds, 3),
                "device_hours": round(train_seconds * self.dist.world_size / 3600, 6),
                "devices": self.dist.world_size, "device": str(self.device),
                "device_name": environment(self.device)["device_name"],
                Row.IMAGES_PER_S: round(images / max(sum(r[Row.SECONDS] for r in kept), 1e-9),
                                        1),
                **peak_memory(self.device)}

    def evaluate_final(self, model, which: str = "") -> dict[str, Any] | None:
        if self.final_eval is None:
            return None
        if not self.dist.enabled:
            return self.final_eval(model, self.device, self.log, which=which)
        distributed.broadcast_buffers(model)      # rank 0's model (model.pt) everywhere
        report = self.final_eval(model, self.device, self.log,
                                 distributed.shard_of(self.dist), which=which)
        return report if self.is_main else None

    @cached_property
    def data_sha256(self) -> str:
        """The training data's fingerprint (checkpoints keep it: a resume checks it)."""
        return data_fingerprint(self.train_x, self.train_y)

    def _example_memory(self) -> ExampleMemory | None:
        """The per-example state the method declares, one row per training example."""
        spec = self.method.memory_spec(tuple(self.train_x.shape[1:]))
        if not spec:
            return None
        n = int(self.train_x.shape[0])
        slots = {name: torch.full((n, *slot.shape), slot.fill, dtype=slot.dtype,
                                  device=self.device) for name, slot in spec.items()}
        return ExampleMemory(slots, distributed.gather_rows if self.dist.enabled else None)

    def close(self) -> None:
        """Close the listeners and the log, and leave the process group (if any) safely."""
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        if hasattr(self.loader, "close"):           # a streaming loader's worker processes
            self.loader.close()
        close_logger(self.log)
        distributed.shutdown(self.dist, release=self.release_ddp)

    def release_ddp(self) -> None:
        """Drop the DDP wrapper (and its reducer) before the process group goes."""
        self.step_model = self.model
