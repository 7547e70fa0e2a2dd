"""The one training loop: schedule, seeds, per-epoch metrics, run directory.

It knows nothing about any one method: it asks ``method.step`` for a loss
``method.replays`` times per minibatch, steps SGD and the scheduler after each, and
accumulates the method's device-resident statistics, reading them once per epoch.

A run directory holds config.json, metrics.jsonl (one line per epoch), train.log,
checkpoint.pt (after every epoch), model.pt (final weights of the bare network, the
lineage's state-dict format) and results.json.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from aaer import __version__
from aaer.checkpoint import (CHECKPOINT, StopSignal, TrainingDiverged, TrainingInterrupted,
                             all_finite, rng_state, set_rng_state, write_checkpoint)
from aaer.guard import NanGuard
from aaer.io import append_jsonl, atomic_torch_save, atomic_write_bytes, atomic_write_json
from aaer.methods import Method, StepContext, create_method

LR_SCHEDULES = ("cyclic", "multistep")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    out_dir: str = "runs/aaer"
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    n_train: int | None = None            # use the first N training images (None: all)
    model: str = "preactresnet18"
    method: str = "n-aaer"
    method_hparams: dict[str, Any] = field(default_factory=dict)
    epsilon: float = 8.0                  # in 1/255 units
    epochs: int = 30
    batch_size: int = 128
    lr_schedule: str = "cyclic"
    lr_min: float = 0.0
    lr_max: float = 0.2
    lr_peak: float = 0.5                  # cyclic: fraction of training at the peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    eval_protocol: str | None = "lineage"  # evaluation after training; None: skip
    n_eval: int | None = None
    eval_batch_size: int | None = None     # None: 256 on CPU, 1024 on CUDA
    eval_precision: str = "fp32"           # final evaluation: fp32 | bf16 | fp16 (autocast)
    probe_n: int = 0                       # per-epoch clean/PGD probe on N held-out points
    probe_steps: int = 10
    progress: bool = True
    overwrite: bool = False
    notes: list[str] = field(default_factory=list)
    on_nan: str = "stop"                   # non-finite loss: stop | skip-batch (aaer.guard)
    compile: bool = False                  # torch.compile the model (eager for double backprop)
    channels_last: str = "auto"            # auto: NHWC for conv nets on CUDA; on; off
    # CO monitor (aaer/monitor.py): on when probe_n > 0
    probe_source: str = "test"             # test: first probe_n test points; holdout: train
    probe_every: int = 0                   # also probe every N optimiser steps (0: per epoch)
    on_co: str = "warn"                    # warn | stop | rollback
    co_drop: float = 0.2                   # PGD probe drop from its best that flags CO
    co_reference: str = "best"             # best | previous (Wong et al.'s code)
    co_fgsm_ratio: float = 0.5             # FGSM may fall < this x PGD's fall; 0: off
    co_rel_drop: float = 0.75              # weak models: a fall > this x best suffices; 0: off
    co_patience: int = 2                   # consecutive probes that must meet the rule
    co_min_drop: float = 0.05              # no CO from a best PGD accuracy under this
    co_gap: float = 0.25                   # masked clause: FGSM >= PGD + this ...; 0: off
    co_floor: float = 0.05                 # ... with PGD accuracy <= this
    rollback_change: str = "auto"          # auto | step | regularizer
    rollback_step_factor: float = 0.75
    rollback_reg_factor: float = 2.0
    max_rollbacks: int = 2
    aae_per_class: bool = False            # also log AAE counts per class

    @property
    def eps(self) -> float:
        return self.epsilon / 255.0

    def validate(self) -> None:
        def bad(name, value, valid):
            raise ValueError(f"invalid {name} {value!r}: {valid}")
        if not (0 < self.epsilon <= 255):
            bad("--epsilon", self.epsilon, "must be in (0, 255] (units of 1/255)")
        if self.epochs < 1:
            bad("--epochs", self.epochs, "must be >= 1")
        if self.batch_size < 1:
            bad("--batch-size", self.batch_size, "must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("--lr-schedule", self.lr_schedule, f"valid: {', '.join(LR_SCHEDULES)}")
        if self.lr_min < 0 or self.lr_max <= 0 or self.lr_max < self.lr_min:
            bad("--lr-max/--lr-min", (self.lr_max, self.lr_min),
                "need lr-max > 0 and 0 <= lr-min <= lr-max")
        if not (0 < self.lr_peak < 1):
            bad("--lr-peak", self.lr_peak, "must be in (0, 1)")
        if self.momentum < 0 or self.momentum >= 1:
            bad("--momentum", self.momentum, "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("--weight-decay", self.weight_decay, "must be >= 0")
        if self.precision not in PRECISIONS:
            bad("--precision", self.precision, f"valid: {', '.join(PRECISIONS)}")
        if self.eval_precision not in PRECISIONS:
            bad("--eval-precision", self.eval_precision, f"valid: {', '.join(PRECISIONS)}")
        if self.n_train is not None and self.n_train < 1:
            bad("--n-train", self.n_train, "must be >= 1")
        if self.n_eval is not None and self.n_eval < 1:
            bad("--n-eval", self.n_eval, "must be >= 1")
        if self.probe_n < 0:
            bad("--probe-n", self.probe_n, "must be >= 0")
        if self.channels_last not in ("auto", "on", "off"):
            bad("--channels-last", self.channels_last, "valid: auto, on, off")
        from aaer.monitor import validate_monitor_config
        validate_monitor_config(self)


def signal_name(signum: int | None) -> str:
    import signal
    return signal.Signals(signum).name if signum is not None else "no signal"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"invalid --device {name!r}: use auto, cpu, cuda or cuda:N ({e})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but no CUDA device is available; "
                         "use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_scheduler(opt, cfg: TrainConfig, total_steps: int):
    """Per-iteration schedule with PyTorch's CyclicLR semantics (momentum cycling included)."""
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
    env["threads"] = torch.get_num_threads()
    return env


def make_logger(out_dir: str) -> logging.Logger:
    log = logging.getLogger(f"aaer.run.{os.path.abspath(out_dir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%Y/%m/%d %H:%M:%S")
    fh = logging.FileHandler(os.path.join(out_dir, "train.log"))
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
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


LOG_HEADER = ("Epoch \t Seconds \t LR \t Train Loss \t Train Acc \t Ab NUM \t Ab CE Loss \t "
              "Ab L2 Loss")


def train(cfg: TrainConfig, dataset=None, *, resume: bool = False) -> dict[str, Any]:
    """Train as configured; returns the results dict (also written to results.json).

    Every setting is checked before any work starts, and the data-dependent ones before
    the run directory is touched (aaer.validate). resume=True continues the run in
    cfg.out_dir from its checkpoint.pt (see aaer.checkpoint.resume).
    """
    from aaer.checkpoint import read_checkpoint
    from aaer.validate import validate_config, validate_data
    validate_config(cfg, resume=resume)
    out = cfg.out_dir
    if os.path.exists(os.path.join(out, "results.json")) and not cfg.overwrite:
        raise ValueError(f"out-dir {out!r} holds a finished run (results.json); "
                         "pass --overwrite to replace it or choose another --out-dir")
    ckpt = read_checkpoint(os.path.join(out, CHECKPOINT)) if resume else None
    if dataset is None:
        from aaer.data import load_dataset
        dataset = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    validate_data(cfg, dataset, ckpt)
    trainer = Trainer(cfg, dataset)
    if ckpt is not None:
        try:
            trainer.load_state(ckpt)
        except BaseException:
            close_logger(trainer.log)
            raise
    return trainer.fit()


class Trainer:
    """One run: builds data, model, method, optimiser and schedule, then ``fit()``.

    The parts are separate methods so that a resume, a monitor or a distributed
    wrapper changes one of them: ``train_step`` (one minibatch), ``run_epoch``,
    ``end_epoch`` (metrics, probe, checkpoint) and ``evaluate_final``.
    """

    def __init__(self, cfg: TrainConfig, dataset=None):
        from aaer import distributed
        from aaer.data import BatchLoader, augmentation_for, load_dataset
        from aaer.models import build
        from aaer.precision import Precision, maybe_compile, use_channels_last

        self.cfg = cfg
        self.dist = distributed.setup_distributed(cfg.device)
        self.is_main = self.dist.is_main
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.device)
        self.prec = Precision(cfg.precision, self.device)
        self.method: Method = create_method(cfg.method, cfg.eps, **cfg.method_hparams)
        self.dataset = dataset if dataset is not None else \
            load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
        ds = self.dataset
        seed_everything(cfg.seed)
        self.train_x, self.train_y = ds.train_x, ds.train_y
        if cfg.n_train is not None:
            self.train_x, self.train_y = ds.train_x[:cfg.n_train], ds.train_y[:cfg.n_train]
        from aaer.monitor import build_monitor
        self.monitor, self.train_x, self.train_y = build_monitor(cfg, ds, self.train_x,
                                                                 self.train_y)
        if self.monitor is not None:
            self.monitor.check_method(self.method)
        if cfg.aae_per_class:
            self.method.aae_num_classes = ds.num_classes
        self.model = build(cfg.model, ds.num_classes, ds.in_channels, ds.image_size,
                           ds.mean, ds.std).to(self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        distributed.reseed_for_rank(cfg.seed, self.dist)
        self.pad, self.flip = augmentation_for(ds)
        self.loader = BatchLoader(self.train_x, self.train_y,
                                  distributed.per_rank_batch(cfg.batch_size, self.dist.world_size),
                                  shuffle=True, pad=self.pad, flip=self.flip, device=self.device,
                                  seed=cfg.seed, rank=self.dist.rank,
                                  world_size=self.dist.world_size)
        self.total_steps = cfg.epochs * len(self.loader) * self.method.replays
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr_max,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = make_scheduler(self.opt, cfg, self.total_steps)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        # reliability: stop signals, divergence guard, resume state (aaer.checkpoint)
        self.stop = StopSignal()
        self.guard = NanGuard(cfg.on_nan, self.device)
        self.resumed, self.partial, self.resumes = False, None, []
        self.seconds_before, self.t_train = 0.0, time.time()
        self.last_good = "no checkpoint was written yet"
        self.data_sha256: str | None = None
        # seconds to sleep after each step: lets tests interrupt a run at a random step
        self.step_delay = float(os.environ.get("AAER_STEP_DELAY", "0") or 0)
        if self.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            self.log = make_logger(cfg.out_dir)
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
        if cfg.compile:
            self.step_model = maybe_compile(self.step_model, self.method, self.log)
            self.compiled = not self.method.cost().double_backprop

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out_dir, name)

    # -- set-up ---------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        cfg, ds, method = self.cfg, self.dataset, self.method
        return {
            **asdict(cfg), "eps": cfg.eps,
            "method_resolved": {"name": method.name, **method.hparams(),
                                "cost_per_step": method.cost().as_dict(),
                                "replays": method.replays},
            "data": {"name": ds.name, "source": getattr(ds, "source", None),
                     "n_train": int(self.train_x.shape[0]), "n_test": int(ds.test_x.shape[0]),
                     "shape": list(self.train_x.shape[1:]), "num_classes": ds.num_classes,
                     "mean": list(ds.mean), "std": list(ds.std),
                     "augmentation": {"crop_pad": self.pad, "hflip": self.flip}},
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
        """A fresh run: clear stale metrics, write config.json, log the set-up."""
        if not self.is_main:
            return
        for stale in ("metrics.jsonl", "results.json", "model.pt", CHECKPOINT):
            if os.path.exists(self.path(stale)):    # an earlier run (--overwrite)
                os.remove(self.path(stale))
        config = self.config_dict()
        atomic_write_json(self.path("config.json"), config)
        for note in self.cfg.notes:
            self.log.info(note)
        self.log.info("method %s %s | model %s (%d params) | data %s: %d train, %d test | "
                      "device %s", self.method.name, self.method.hparams(), self.cfg.model,
                      config["model_params"], self.dataset.name, self.train_x.shape[0],
                      self.dataset.test_x.shape[0], self.device)
        self.log.info(LOG_HEADER)

    # -- training -------------------------------------------------------------------
    def train_step(self, x, y, ctx: StepContext):
        """One minibatch: ``replays`` method steps, each followed by SGD and the schedule."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dist.enabled:
            from aaer.distributed import batch_sum
            ctx = replace(ctx, batch_sum=batch_sum)
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
        bar = _progress_bar(len(self.loader), f"epoch {epoch + 1}/{cfg.epochs}",
                            cfg.progress and self.is_main)
        for i, (x, y) in enumerate(self.loader, start=self.loader.position):
            ctx = StepContext(epoch, i, len(self.loader), cfg.epochs)
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
            if self.monitor is not None and self.monitor.after_step(self, epoch, i):
                break
        if bar is not None:
            bar.close()
        self.guard.check(epoch, self.last_good)
        if n_seen == 0:
            raise TrainingDiverged(f"every step of epoch {epoch} had a non-finite loss or "
                                   f"gradient and was skipped; {self.last_good}")
        if self.dist.enabled:                    # one all-reduce per epoch
            from aaer.distributed import reduce_sums
            red = reduce_sums({"loss": loss_sum, "correct": correct, "n": n_seen,
                               **{"stat." + k: v for k, v in stat_sums.items()}}, device)
            loss_sum, correct, n_seen = red.pop("loss"), red.pop("correct"), int(red.pop("n"))
            stat_sums = {k[5:]: v for k, v in red.items()}
        sums = {k: v.tolist() if v.dim() else float(v) for k, v in stat_sums.items()}
        skipped = {"skipped_steps": self.guard.skipped} if cfg.on_nan == "skip-batch" else {}
        return {"epoch": epoch, "seconds": round(time.time() - t0, 3),
                "lr": self.sched.get_last_lr()[0], "train_loss": float(loss_sum) / n_seen,
                "train_acc": float(correct) / n_seen, "n": n_seen,
                **self.method.summarize(sums, n_seen), **skipped}

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Check, probe, record and checkpoint one finished epoch."""
        epoch = row["epoch"]
        if not np.isfinite(row["train_loss"]):
            self.log.error("non-finite training loss in epoch %d: stopping (weights of the "
                           "previous epoch are in checkpoint.pt)", epoch)
            raise FloatingPointError(f"training loss became {row['train_loss']} in epoch "
                                     f"{epoch}; lower --lr-max or the regulariser weights")
        if self.monitor is not None:
            self.monitor.end_epoch(self, row)
        self.history.append(row)
        if self.is_main:
            append_jsonl(self.path("metrics.jsonl"), row)
        self.log.info("%d \t %.1f \t %.4f \t %.4f \t %.4f \t %d \t %.4f \t %.4f%s", epoch,
                      row["seconds"], row["lr"], row["train_loss"], row["train_acc"],
                      row.get("aae_count", 0), row.get("aaer_ce_var", 0.0),
                      row.get("aaer_var_gap", 0.0),
                      "".join(f" | {k} {row[k]:.4f}" for k in row if k.startswith("probe_")
                              and k != "probe_seconds"))
        self.save_checkpoint(epoch)

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
            from aaer.validate import data_fingerprint
            self.data_sha256 = data_fingerprint(self.train_x, self.train_y)
        return {"epoch": epoch, "model": self.model.net.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "method": self.method.state_dict(), "loader": self.loader.state_dict(),
                "partial": partial, "rng": rng_state(), "history": list(self.history),
                "train_seconds": self.seconds_before + time.time() - self.t_train,
                "resumes": list(self.resumes), "config": asdict(self.cfg),
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
        write_checkpoint(self.path(CHECKPOINT), self.state_dict(epoch, partial))
        where = f"end of epoch {epoch}" if partial is None else \
            f"epoch {epoch} after step {self.loader.position}"
        self.last_good = f"checkpoint.pt holds the last good state ({where})"

    def interrupt(self, epoch: int, step: int, partial: dict[str, Any]) -> None:
        """A stop signal arrived: checkpoint between steps, then stop."""
        self.guard.check(epoch, self.last_good)       # never checkpoint a diverged state
        self.save_checkpoint(epoch, partial)
        name = signal_name(self.stop.signum)
        self.log.info("received %s: checkpoint written in epoch %d after step %d; continue "
                      "with: aaer train --resume %s", name, epoch, step, self.cfg.out_dir)
        raise TrainingInterrupted(self.stop.signum, self.cfg.out_dir, epoch, step)

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` (exact resume)."""
        from aaer.models import load_state_dict_into
        load_state_dict_into(self.model.net, ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.method.load_state_dict(ckpt["method"])
        if "precision" in ckpt:
            self.prec.load_state_dict(ckpt["precision"])
        if self.monitor is not None and "monitor" in ckpt:
            self.monitor.load_state_dict(ckpt["monitor"], self)
        self.loader.load_state_dict(ckpt["loader"])
        self.history = list(ckpt["history"])
        self.partial = ckpt["partial"]
        self.start_epoch = ckpt["epoch"] + (1 if self.partial is None else 0)
        self.seconds_before = float(ckpt["train_seconds"])
        self.data_sha256 = ckpt["data"]["sha256"]
        self.resumed = True
        step = self.loader.position if self.partial is not None else 0
        self.resumes = list(ckpt["resumes"]) + [{
            "epoch": self.start_epoch, "step": step, "checkpoint_saved_at": ckpt["saved_at"],
            "resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(self.device)}]
        # metrics.jsonl may hold a line written after the checkpoint (killed in between)
        atomic_write_bytes(self.path("metrics.jsonl"), "".join(
            json.dumps(row) + "\n" for row in self.history).encode())
        self.last_good = (f"checkpoint.pt holds the last good state (epoch {self.start_epoch}"
                          f", step {step})")
        self.log.info("resumed from %s at epoch %d, step %d (checkpoint of %s) on %s",
                      self.path(CHECKPOINT), self.start_epoch, step, ckpt["saved_at"],
                      self.device)
        for note in set_rng_state(ckpt["rng"]):   # last: nothing may draw before training
            self.log.warning(note)

    def evaluate_final(self) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.eval_protocol or not self.is_main:
            return None
        from aaer.evaluate import evaluate, format_table, get_protocol
        protocol = get_protocol(cfg.eval_protocol, n_eval=cfg.n_eval)
        # an interrupted AutoAttack resumes from this state on `aaer train --resume`
        aa_state = self.path(f"autoattack_state_{protocol.name}.pt")
        report = evaluate(self.model, self.dataset.test_x, self.dataset.test_y, cfg.eps,
                          protocol, batch_size=cfg.eval_batch_size, device=self.device,
                          seed=cfg.seed, precision=cfg.eval_precision, aa_state_path=aa_state)
        for line in format_table(report).splitlines():
            self.log.info(line)
        return report

    def fit(self) -> dict[str, Any]:
        try:
            if self.start_epoch == 0 and not self.resumed:
                self.start()
            self.stop.install()
            t_train = self.t_train = time.time()
            for epoch in range(self.start_epoch, self.cfg.epochs):
                row = self.run_epoch(epoch)
                self.end_epoch(row)
                if self.stop.requested:         # the end-of-epoch checkpoint is written
                    self.log.info("received %s: stopping after epoch %d; continue with: aaer "
                                  "train --resume %s", signal_name(self.stop.signum), epoch,
                                  self.cfg.out_dir)
                    raise TrainingInterrupted(self.stop.signum, self.cfg.out_dir, epoch + 1, 0)
                if self.monitor is not None and self.monitor.should_stop:
                    break
            self.stop.restore()                 # evaluation may be stopped at once
            train_seconds = time.time() - t_train + self.seconds_before
            if self.is_main:
                atomic_torch_save(self.path("model.pt"), self.model.net.state_dict())
            self.log.info("Total train time: %.4f minutes", train_seconds / 60)
            # train_seconds covers every epoch run so far, resumed ones included
            epochs_run = self.history[-1]["epoch"] + 1 if self.history else self.cfg.epochs
            results: dict[str, Any] = {
                "train_seconds": round(train_seconds, 3),
                "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 3),
                "epochs": self.cfg.epochs, "final_epoch": self.history[-1]}
            if self.resumes:
                results["resumes"] = self.resumes
            if self.monitor is not None:
                results["monitor"] = self.monitor.summary()
            report = self.evaluate_final()
            if report is not None:
                results["evaluation"] = report
            if self.is_main:
                atomic_write_json(self.path("results.json"), results)
            return results
        except TrainingDiverged as e:
            self.log.error("%s", e)
            raise
        finally:
            self.stop.restore()
            close_logger(self.log)
            from aaer.distributed import cleanup
            cleanup(self.dist)
