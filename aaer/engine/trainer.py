"""The one training loop: schedule, seeds, per-epoch metrics, checkpoints.

It knows nothing about any one method: it asks ``method.step`` for a loss
``method.replays`` times per minibatch, steps SGD and the scheduler after each, and
accumulates the method's device-resident statistics, reading them once per epoch. It
knows no CO rule and no evaluation protocol either: the door (aaer.train) hands it a
monitor, whose decisions it applies (continue, warn, stop, roll back with a named change
the method makes), a final evaluation to call, and listeners (TensorBoard) that hear each
epoch and probe. Everything it writes goes through the run directory (aaer.runs.RunDir).
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import random
import sys
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch

from aaer import __version__
from aaer.config import SETTINGS, RunConfig
from aaer.config.resolve import method_kwargs
from aaer.engine import distributed
from aaer.engine.checkpoint import StopSignal, all_finite, rng_state, set_rng_state
from aaer.engine.guard import NanGuard
from aaer.engine.precision import Precision, maybe_compile, use_channels_last
from aaer.engine.preflight import data_fingerprint
from aaer.errors import TrainingDiverged, TrainingInterrupted, signal_name
from aaer.methods import Method, StepContext, create_method
from aaer.runs import CHECKPOINT, RunDir


# a loader that keeps the model waiting more than this share of an epoch gets a warning
STARVED = 0.3


def _timed(iterable, waited: list):
    """``iterable``'s items; adds the time spent producing each to waited[0]."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


class Rewound(Exception):
    """A rollback put the training state back: go on from epoch ``epoch``."""

    def __init__(self, epoch: int):
        super().__init__(f"rolled back to epoch {epoch}")
        self.epoch = epoch


def resolve_device(name: str) -> torch.device:
    """auto: cuda if present, else cpu (the name itself is checked by the schema)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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


def environment(device: torch.device) -> dict[str, Any]:
    env = {"aaer": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "device": str(device)}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = cpu_name()
        # the kernels torch picked: runs agree bit for bit only on the same capability
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    env["threads"] = torch.get_num_threads()
    return env


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_logger(out_dir: str, path: str) -> logging.Logger:
    log = logging.getLogger(f"aaer.run.{os.path.abspath(out_dir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%Y/%m/%d %H:%M:%S")
    fh = logging.FileHandler(path)
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    log.addHandler(fh)
    log.addHandler(sh)
    return log


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:          # the bar is a convenience: train without it
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


LOG_HEADER = ("Epoch \t Seconds \t LR \t Train Loss \t Train Acc \t Ab NUM \t Ab CE Loss \t "
              "Ab L2 Loss")



# provenance a run's log states (the rest is explicit or a default)
QUIET_SOURCES = ("explicit", "default", "method default", "given")


class Trainer:
    """One run: builds model, method, loader, optimiser and schedule, then ``fit()``.

    ``cfg``: the resolved run (aaer.config.resolve); ``dataset``: the loaded data set;
    ``run``: its run directory; ``train_set``: (x, y) to train on (default: the data set's
    first --n-train images); ``monitor``: the CO monitor (aaer.monitor.COMonitor) or None;
    ``final_eval(model, device, log, shard)``: the evaluation after training, or None
    (under torchrun every process evaluates its share; rank 0 keeps the report);
    ``listeners``: objects with ``epoch(row)``, ``probe(record)`` and ``close()``.
    The parts are separate methods so that a resume, the monitor or a distributed wrapper
    changes one of them: ``train_step`` (one minibatch), ``run_epoch``, ``end_epoch``
    (metrics, probe, checkpoint) and ``fit``.
    """

    def __init__(self, cfg: RunConfig, dataset, run: RunDir, *, train_set=None, monitor=None,
                 final_eval: Callable | None = None, listeners=()):
        from aaer.data import augmentation_for, make_loader, streamed
        from aaer.models import build

        self.cfg, self.run, self.dataset = cfg, run, dataset
        self.monitor, self.final_eval, self.listeners = monitor, final_eval, list(listeners)
        rt, opt = cfg.runtime, cfg.optim
        self.dist = distributed.setup_distributed(rt.device, rt.dist_timeout)
        self.is_main = self.dist.is_main
        self.device = self.dist.device if self.dist.enabled else resolve_device(rt.device)
        self.prec = Precision(rt.precision, self.device)
        self.method: Method = create_method(cfg.method.name, cfg.eps, **method_kwargs(cfg))
        ds = dataset
        seed_everything(opt.seed)
        if train_set is None:
            n = cfg.data.n_train
            train_set = (ds.train_x[:n], ds.train_y[:n]) if n is not None else \
                (ds.train_x, ds.train_y)
        self.train_x, self.train_y = train_set
        if cfg.monitor.aae_per_class:
            self.method.aae_num_classes = ds.num_classes
        self.model = build(cfg.model.name, ds.num_classes, ds.in_channels, ds.image_size,
                           ds.mean, ds.std).to(self.device)
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
        self.opt = torch.optim.SGD(self.model.parameters(), lr=opt.lr_max,
                                   momentum=opt.momentum, weight_decay=opt.weight_decay)
        self.sched = make_scheduler(self.opt, opt, self.total_steps)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        # reliability: stop signals, divergence guard, resume state
        self.stop = StopSignal()
        self.guard = NanGuard(rt.on_nan, self.device)
        self.resumed, self.partial, self.resumes = False, None, []
        self.seconds_before, self.t_train = 0.0, time.time()
        self.last_good = "no checkpoint was written yet"
        self.data_sha256: str | None = None
        # the CO monitor's best probe (weights + optimiser) and whether it stopped training;
        # --on-co rollback: the whole state a rollback returns to (the best probe's, or the
        # start's), and the epochs trained in all, rolled-back ones included
        self.best: dict[str, Any] | None = None
        self.stopping = False
        self.rewind_point: dict[str, Any] | None = None
        self._best_pending = False
        self._row: dict[str, Any] | None = None
        # seconds to sleep after each step: lets tests interrupt a run at a random step
        self.step_delay = float(os.environ.get("AAER_STEP_DELAY", "0") or 0)
        if self.is_main:
            os.makedirs(run.path, exist_ok=True)
            self.log = make_logger(run.path, run.log_path)
        else:                                    # other ranks write nothing
            self.log = logging.getLogger(f"aaer.run.rank{self.dist.rank}")
            self.log.addHandler(logging.NullHandler())
            self.log.propagate = False
        # step_model is what the method calls: the model, DDP-wrapped and/or compiled;
        # self.model stays the bare Normalized network for evaluation and checkpoints
        self.step_model = self.model
        if self.dist.enabled:
            self.step_model = distributed.wrap_ddp(self.model, self.dist)
        self.compiled = False
        if rt.compile:
            self.step_model = maybe_compile(self.step_model, self.method, self.log)
            self.compiled = not self.method.cost().double_backprop

    # -- set-up ---------------------------------------------------------------------
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
            "iters_per_epoch": len(self.loader), "total_steps": self.total_steps,
            "environment": environment(self.device),
            "performance": {"precision": self.prec.name, "channels_last": self.channels_last,
                            "compile": self.compiled,
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
            if source in QUIET_SOURCES or source.startswith(("not used", "by key")) or \
                    path.count(".") != 1:
                continue
            self.log.info("%s %s: %s", SETTINGS[path].flag, self.cfg.get(path), source)
        self.log.info("method %s %s | model %s (%d params) | data %s: %d train, %d test | "
                      "device %s", self.method.name, self.method.hparams(), self.cfg.model.name,
                      sum(p.numel() for p in self.model.parameters()), self.dataset.name,
                      self.train_x.shape[0], self.dataset.test_x.shape[0], self.device)
        self.log.info(LOG_HEADER)

    # -- training -------------------------------------------------------------------
    def train_step(self, x, y, ctx: StepContext):
        """One minibatch: ``replays`` method steps, each followed by SGD and the schedule."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dist.enabled:
            ctx = replace(ctx, batch_sum=distributed.batch_sum)
        for _ in range(self.method.replays):
            buffers = self.guard.snapshot(self.model)   # only with --on-nan skip-batch
            with self.prec.autocast():
                out = self.method.step(self.step_model, x, y, ctx)
            self.opt.zero_grad(set_to_none=True)
            self.prec.backward(out.loss)
            if buffers is not None and not self.guard.step_ok(out.loss, self.model.parameters()):
                self.guard.skip(self.model, buffers, self.opt)
                self.sched.step()
                out = None                      # a skipped step: not in the epoch's metrics
                continue
            self.prec.step(self.opt)
            self.sched.step()
        return out

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, device = self.cfg, self.device
        epochs = cfg.optim.epochs
        self.step_model.train()
        self.loader.set_epoch(epoch)
        t0 = time.time()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        stat_sums: dict[str, torch.Tensor] = {}
        n_seen = 0
        self.guard.reset()
        if self.partial is not None:            # resuming inside this epoch: its sums so far
            p, self.partial = self.partial, None
            loss_sum, correct = p["loss_sum"].to(device), p["correct"].to(device)
            stat_sums = {k: v.to(device) for k, v in p["stat_sums"].items()}
            n_seen, t0, self.guard.skipped = p["n_seen"], t0 - p["seconds"], p["skipped"]
        bar = _progress_bar(len(self.loader), f"epoch {epoch + 1}/{epochs}",
                            cfg.runtime.progress and self.is_main)
        waited = [0.0]                          # seconds spent waiting for batches
        for i, (x, y) in enumerate(_timed(self.loader, waited), start=self.loader.position):
            ctx = StepContext(epoch, i, len(self.loader), epochs)
            out = self.train_step(x, y, ctx)
            if out is not None:
                self.guard.observe(out.loss, i)
                b = y.shape[0]
                n_seen += b
                loss_sum += out.loss.detach().float() * b
                correct += (out.logits.argmax(1) == y).sum()
                for k, v in out.stats.items():
                    stat_sums[k] = stat_sums[k] + v if k in stat_sums else v.detach().clone()
            if bar is not None:
                bar.update(1)
            if self.step_delay:
                time.sleep(self.step_delay)
            if self.guard.due(i):
                self.guard.check(epoch, self.last_good)
            if self.stop.requested and i + 1 < len(self.loader):
                self.interrupt(epoch, i + 1, {"loss_sum": loss_sum, "correct": correct,
                                              "stat_sums": stat_sums, "n_seen": n_seen,
                                              "seconds": time.time() - t0})
            step = epoch * len(self.loader) + i + 1
            if self.monitor is not None and self.monitor.due(step):
                self.observe(epoch, step, {"loss_sum": loss_sum, "correct": correct,
                                           "stat_sums": stat_sums, "n_seen": n_seen,
                                           "seconds": time.time() - t0})
                if self.stopping:
                    break
        if bar is not None:
            bar.close()
        self.guard.check(epoch, self.last_good)
        if n_seen == 0:
            raise TrainingDiverged(f"every step of epoch {epoch} had a non-finite loss or "
                                   f"gradient and was skipped; {self.last_good}")
        if self.dist.enabled:                    # one all-reduce per epoch
            red = distributed.reduce_sums({"loss": loss_sum, "correct": correct, "n": n_seen,
                                           **{"stat." + k: v for k, v in stat_sums.items()}},
                                          device)
            loss_sum, correct, n_seen = red.pop("loss"), red.pop("correct"), int(red.pop("n"))
            stat_sums = {k[5:]: v for k, v in red.items()}
        sums = {k: v.tolist() if v.dim() else float(v) for k, v in stat_sums.items()}
        skipped = {"skipped_steps": self.guard.skipped} if cfg.runtime.on_nan == "skip-batch" \
            else {}
        seconds = time.time() - t0
        share = waited[0] / max(seconds, 1e-9)
        if share > STARVED and seconds > 1.0:
            self.log.warning("the data loader starved the model: %.0f%% of epoch %d went to "
                             "waiting for batches; give the loader more --workers (or a "
                             "faster disk)", 100 * share, epoch)
        return {"epoch": epoch, "seconds": round(seconds, 3),
                "lr": self.sched.get_last_lr()[0], "train_loss": float(loss_sum) / n_seen,
                "train_acc": float(correct) / n_seen, "n": n_seen,
                **self.method.summarize(sums, n_seen), **skipped,
                "images_per_s": round(n_seen / max(seconds, 1e-9), 1),
                "data_wait_share": round(share, 4)}

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Check, probe, record and checkpoint one finished epoch."""
        epoch = row["epoch"]
        if not np.isfinite(row["train_loss"]):
            self.log.error("non-finite training loss in epoch %d: stopping (weights of the "
                           "previous epoch are in checkpoint.pt)", epoch)
            raise FloatingPointError(f"training loss became {row['train_loss']} in epoch "
                                     f"{epoch}; lower --lr-max or the regulariser weights")
        if self.monitor is not None:
            step = (epoch + 1) * len(self.loader)
            if not self.stopping and self.monitor.last_step() != step:
                self._row = row                   # a rollback here discards it too
                self.observe(epoch, step)
                self._row = None
            row.update(self.monitor.epoch_fields())
        self.history.append(row)
        if self._best_pending:                   # the epoch's probe was the best so far
            self.keep_rewind_point(self.state_dict(epoch))
        if self.is_main:
            self.run.append_metrics(row)
        self.log.info("%d \t %.1f \t %.4f \t %.4f \t %.4f \t %d \t %.4f \t %.4f%s | %.0f "
                      "img/s, %.0f%% waiting for data", epoch,
                      row["seconds"], row["lr"], row["train_loss"], row["train_acc"],
                      row.get("aae_count", 0), row.get("aaer_ce_var", 0.0),
                      row.get("aaer_var_gap", 0.0),
                      "".join(f" | {k} {row[k]:.4f}" for k in row if k.startswith("probe_")
                              and k != "probe_seconds"),
                      row["images_per_s"], 100 * row["data_wait_share"])
        if self.is_main:
            for listener in self.listeners:
                listener.epoch(row)
        self.save_checkpoint(epoch)

    # -- the CO monitor's decisions ---------------------------------------------------
    @property
    def rolls_back(self) -> bool:
        return self.monitor is not None and self.monitor.on_co == "rollback"

    def observe(self, epoch: int, step: int, partial: dict[str, Any] | None = None) -> None:
        """Probe now and do what the monitor decides (``partial``: the sums of the epoch in
        progress, for a probe between two steps)."""
        if self.dist.enabled:       # every process probes rank 0's model: one decision
            distributed.broadcast_buffers(self.model)
        last = step == self.cfg.optim.epochs * len(self.loader)
        decision = self.monitor.probe(self.model, epoch, step, last=last)
        for level, message in decision.messages:
            self.log.log(level, message)
        if decision.new_best:
            self.remember_best(decision.record)
            if self.rolls_back:
                if partial is None:              # at an epoch's end: once it is recorded
                    self._best_pending = True
                else:
                    self.keep_rewind_point(self.state_dict(epoch, partial))
        if self.is_main:
            if self.monitor.every_steps:        # every probe, also the epochs' last
                self.run.append_probe(decision.record)
            for listener in self.listeners:
                listener.probe(decision.record)
        if decision.action == "stop":
            if decision.restore:
                self.restore_best(with_optimizer=False)
            self.stopping = True
        elif decision.action == "rollback":
            self.rewind(decision, epoch + (step - epoch * len(self.loader)) / len(self.loader))

    def keep_rewind_point(self, state: dict[str, Any]) -> None:
        self._best_pending = False
        self.rewind_point = copy.deepcopy(state)
        if self.is_main:
            self.run.save_rewind(self.rewind_point)

    def rewind(self, decision, position: float) -> None:
        """Roll back: the whole state of the rewind point (weights, optimiser, schedule,
        the loader's position and RNG, every RNG, the epoch's sums, the metrics and the
        monitor's probes) comes back; the monitor keeps its CO events and rollbacks; the
        method is strengthened as it declares; training goes on from there."""
        target = self.rewind_point
        if target is None:
            raise RuntimeError("CO flagged but the state to roll back to is not available "
                               "(rewind.pt is missing from the run directory)")
        kept = self.monitor.state_dict()
        discarded = self.history[len(target["history"]):]
        if self._row is not None:                 # the epoch whose probe confirmed CO
            rec = decision.record
            discarded.append({**self._row, "probe_clean_acc": rec["clean"],
                              "probe_fgsm_acc": rec["fgsm"], "probe_pgd_acc": rec["pgd"],
                              "co_flag": True})
            self._row = None
        back_to = target["epoch"] + (1 if target["partial"] is None else 0) + \
            (target["loader"]["position"] / len(self.loader) if target["partial"] is not None
             else 0.0)
        elapsed = self.seconds_before + time.time() - self.t_train
        self.restore(copy.deepcopy(target))   # loading consumes parts of it (CyclicLR's state)
        self.monitor.rewound(kept)
        for change in self.monitor.rollbacks:          # every earlier rollback's change
            self.method.apply_change(change)
        change = self.method.strengthen(decision.change, decision.factors)
        self.log.warning("%s", self.monitor.rolled_back(
            change, epochs_discarded=round(position - back_to, 6), rows_discarded=discarded))
        self.seconds_before, self.t_train = elapsed, time.time()
        if self.is_main:
            self.run.write_metrics(self.history)
        self.save_checkpoint(target["epoch"], target["partial"])
        raise Rewound(self.start_epoch)

    def stop_diverged(self, epoch: int, error: TrainingDiverged) -> bool:
        """Training diverged after a rollback strengthened the method: stop with the best
        probe's weights, and let the run end (model.pt, evaluation, results.json) saying
        it was not rescued. False (the error stands) for any other divergence, and under
        DDP, where only rank 0 sees a non-finite weight."""
        if not (self.rolls_back and self.monitor.rollbacks and self.best is not None) or \
                self.dist.enabled:
            return False
        self.log.error("%s", error)
        self.restore_best(with_optimizer=False)
        self.log.warning("%s", self.monitor.diverged(epoch))
        self.stopping = True
        return True

    def remember_best(self, record: dict[str, Any]) -> None:
        self.best = {
            "epoch": record["epoch"], "step": record["step"], "probe": dict(record),
            "model": {k: v.detach().to("cpu", copy=True)
                      for k, v in self.model.net.state_dict().items()},
            "optimizer": copy.deepcopy(self.opt.state_dict()),
        }
        if self.is_main:
            self.run.save_best_probe(self.best)

    def restore_best(self, with_optimizer: bool) -> None:
        """The best probe's weights (and optimiser state) back; the schedule stays put."""
        if self.best is None:          # only after a resume that lost best_probe.pt
            raise RuntimeError("CO flagged but the best probe's weights are not available "
                               "(best_probe.pt is missing from the run directory)")
        self.model.net.load_state_dict(self.best["model"])
        if with_optimizer:
            # keep the schedule where it is: the restored state carries stale lr/momentum
            now = [{k: g[k] for k in ("lr", "momentum", "betas") if k in g}
                   for g in self.opt.param_groups]
            self.opt.load_state_dict(copy.deepcopy(self.best["optimizer"]))
            for g, keep in zip(self.opt.param_groups, now):
                g.update(keep)

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resume needs. ``epoch``: the last finished epoch, or with ``partial``
        (the sums of the epoch in progress) the epoch the loader is inside."""
        if partial is not None:
            partial = {"loss_sum": partial["loss_sum"].detach().cpu(),
                       "correct": partial["correct"].detach().cpu(),
                       "stat_sums": {k: v.detach().cpu() for k, v in partial["stat_sums"].items()},
                       "n_seen": int(partial["n_seen"]), "seconds": float(partial["seconds"]),
                       "skipped": self.guard.skipped}
        if self.data_sha256 is None:
            self.data_sha256 = data_fingerprint(self.train_x, self.train_y)
        return {"epoch": epoch, "model": self.model.net.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "method": self.method.state_dict(), "loader": self.loader.state_dict(),
                "partial": partial, "rng": rng_state(), "history": list(self.history),
                "train_seconds": self.seconds_before + time.time() - self.t_train,
                "resumes": list(self.resumes), "config": self.cfg.to_dict(),
                "data": {"n_train": int(self.train_x.shape[0]),
                         "shape": list(self.train_x.shape[1:]),
                         "num_classes": self.dataset.num_classes, "sha256": self.data_sha256},
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "aaer": __version__,
                "precision": self.prec.state_dict(),
                **({"monitor": self.monitor.state_dict()} if self.monitor is not None else {})}

    def save_checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Atomically replace checkpoint.pt, never with non-finite weights."""
        if not self.is_main:
            return
        if not all_finite(list(self.model.parameters()) + list(self.model.buffers())):
            raise TrainingDiverged(f"training diverged: the weights became non-finite in "
                                   f"epoch {epoch}; checkpoint.pt was not overwritten "
                                   f"({self.last_good}). Lower --lr-max or the regulariser "
                                   "weights")
        self.run.write_checkpoint(self.state_dict(epoch, partial))
        where = f"end of epoch {epoch}" if partial is None else \
            f"epoch {epoch} after step {self.loader.position}"
        self.last_good = f"checkpoint.pt holds the last good state ({where})"

    def interrupt(self, epoch: int, step: int, partial: dict[str, Any]) -> None:
        """A stop signal arrived: checkpoint between steps, then stop."""
        self.guard.check(epoch, self.last_good)       # never checkpoint a diverged state
        self.save_checkpoint(epoch, partial)
        name = signal_name(self.stop.signum)
        self.log.info("received %s: checkpoint written in epoch %d after step %d; continue "
                      "with: aaer train --resume %s", name, epoch, step, self.run.path)
        raise TrainingInterrupted(self.stop.signum, self.run.path, epoch, step,
                                  self.run.file(CHECKPOINT))

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Put the training state of ``ckpt`` (a checkpoint or a rewind point) back: weights,
        optimiser, schedule, method state, the monitor, the loader's position, the metrics,
        the epoch's partial sums and, last, every RNG state. Returns the RNG notes."""
        from aaer.models import load_state_dict_into
        load_state_dict_into(self.model.net, ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.method.load_state_dict(ckpt["method"])
        if "precision" in ckpt:
            self.prec.load_state_dict(ckpt["precision"])
        if self.monitor is not None and "monitor" in ckpt:
            self.monitor.load_state_dict(ckpt["monitor"])
            for change in self.monitor.rollbacks:     # the changes rollbacks made
                self.method.apply_change(change)
            self.stopping = self.monitor.stopped is not None
        self.loader.load_state_dict(ckpt["loader"])
        self.history = list(ckpt["history"])
        self.partial = ckpt["partial"]
        self.start_epoch = ckpt["epoch"] + (1 if self.partial is None else 0)
        return set_rng_state(ckpt["rng"])         # last: nothing may draw before training

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` (exact resume)."""
        notes = self.restore(ckpt)
        if self.monitor is not None and "monitor" in ckpt:
            self.best = self.run.best_probe()
            if self.rolls_back:
                self.rewind_point = self.run.rewind_point()
        self.seconds_before = float(ckpt["train_seconds"])
        self.data_sha256 = ckpt["data"]["sha256"]
        self.resumed = True
        step = self.loader.position if self.partial is not None else 0
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

    def evaluate_final(self) -> dict[str, Any] | None:
        if self.final_eval is None:
            return None
        if not self.dist.enabled:
            return self.final_eval(self.model, self.device, self.log)
        distributed.broadcast_buffers(self.model)    # rank 0's model (model.pt) everywhere
        report = self.final_eval(self.model, self.device, self.log,
                                 distributed.shard_of(self.dist))
        return report if self.is_main else None

    def fit(self) -> dict[str, Any]:
        try:
            if self.start_epoch == 0 and not self.resumed:
                self.start()
            self.stop.install()
            self.t_train = time.time()
            if self.rolls_back and self.rewind_point is None and not self.resumed:
                self.keep_rewind_point(self.state_dict(-1))   # CO before any good probe
            epoch = self.start_epoch
            while epoch < self.cfg.optim.epochs and not self.stopping:
                try:
                    row = self.run_epoch(epoch)
                    self.end_epoch(row)
                except Rewound as back:
                    epoch = back.epoch
                    continue
                except TrainingDiverged as e:
                    if not self.stop_diverged(epoch, e):
                        raise
                    break
                if self.stop.requested:         # the end-of-epoch checkpoint is written
                    self.log.info("received %s: stopping after epoch %d; continue with: aaer "
                                  "train --resume %s", signal_name(self.stop.signum), epoch,
                                  self.run.path)
                    raise TrainingInterrupted(self.stop.signum, self.run.path, epoch + 1, 0,
                                              self.run.file(CHECKPOINT))
                epoch += 1
            self.stop.restore()                 # evaluation may be stopped at once
            train_seconds = time.time() - self.t_train + self.seconds_before
            if self.is_main:
                self.run.save_model(self.model.net.state_dict())
            self.log.info("Total train time: %.4f minutes", train_seconds / 60)
            # train_seconds covers every epoch run so far, resumed and rolled-back ones
            # included
            epochs_run = self.history[-1]["epoch"] + 1 if self.history else \
                self.cfg.optim.epochs
            if self.monitor is not None:
                epochs_run += self.monitor.epochs_discarded()
            results: dict[str, Any] = {
                "train_seconds": round(train_seconds, 3),
                "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 3),
                "epochs": self.cfg.optim.epochs, "epochs_trained": round(epochs_run, 6),
                "final_epoch": self.history[-1]}
            if self.resumes:
                results["resumes"] = self.resumes
            if self.monitor is not None:
                results["monitor"] = self.monitor.summary()
            report = self.evaluate_final()
            if report is not None:
                results["evaluation"] = report
            if self.is_main:
                self.run.write_results(results)
            return results
        except TrainingDiverged as e:
            self.log.error("%s", e)
            raise
        finally:
            self.stop.restore()
            self.close()

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
