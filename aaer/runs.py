"""The run directory: the only code that knows its file names, reads them and writes them.

One run = one directory:

    config.json        the resolved settings, where each came from, and what was built
    metrics.jsonl      one line per finished epoch
    train.log          the human log
    checkpoint.pt      everything a resume needs (after every epoch, and on SIGTERM)
    model.pt           the final weights of the bare network (the lineage's state-dict keys)
    model_selected.pt  --select best-val-pgd: the weights the validation split selected
    results.json       written last: the run is finished
    best_probe.pt      the CO monitor's best probe (weights and optimiser state)
    rewind.pt          --on-co rollback: the whole training state a rollback returns to
    probes.jsonl       the CO monitor's probes between epochs (--probe-every)
    autoattack_state_<protocol>.pt   an interrupted AutoAttack's progress
    tensorboard/       live TensorBoard events (--tensorboard)
    wandb_run.json     --wandb: the W&B run this run logs to (a resume continues it)
    wandb/             --wandb: W&B's own files (offline runs wait there for `wandb sync`)

``RunDir`` names, reads and writes these files (atomically; checkpoints only through
``torch.load(weights_only=True)``) and says the run's state: ``empty`` (nothing to
resume), ``interrupted`` (a checkpoint, no results) or ``finished``. Every reader names
the file and what to do when it is missing or damaged. ``load_run`` reads a run for the
report, the suite summary and the demo. Run directories written by aaer 0.1 (a flat
config.json) still load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from aaer.config import RunConfig, from_dict, from_flat
from aaer.config.resolve import complete_method, validate
from aaer.config.settings import UNSET, Source
from aaer.errors import DamagedFile, MissingFile, UsageError
from aaer.io import (append_jsonl, atomic_torch_save, atomic_write_bytes, atomic_write_json,
                     fsync_dir, read_json, read_jsonl)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "train.log"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
SELECTED = "model_selected.pt"
RESULTS = "results.json"
BEST_PROBE = "best_probe.pt"
REWIND = "rewind.pt"
PROBES = "probes.jsonl"
TENSORBOARD = "tensorboard"
WANDB = "wandb_run.json"
WANDB_DIR = "wandb"
CONFIG_FORMAT = "aaer-run/2"
CHECKPOINT_FORMAT = "aaer-checkpoint/1"
STATES = ("empty", "interrupted", "finished")
# what an aaer 0.1 config.json holds besides the flat settings
# what config.json records beside the settings (what they built): the trainer writes these,
# and a flat (aaer 0.1 style) config.json is read without them
BUILT_KEYS = ("method_resolved", "data", "model_params", "model_input", "iters_per_epoch",
              "total_steps", "environment", "performance")


class Row:
    """The fields of a metrics row (one line of metrics.jsonl per finished epoch), named here
    and nowhere else. A row also holds the method's own per-epoch statistics, named by the
    method (aaer.methods: ``summarize``, ``log_columns``)."""

    EPOCH = "epoch"
    SECONDS = "seconds"                  # training seconds of the epoch
    LR = "lr"                            # learning rate after the epoch's last step
    TRAIN_LOSS = "train_loss"
    TRAIN_ACC = "train_acc"              # on the examples the method trained on
    N = "n"                              # examples the epoch's counted steps saw
    SKIPPED = "skipped_steps"            # --on-nan skip-batch
    IMAGES_PER_S = "images_per_s"
    DATA_WAIT = "data_wait_share"        # share of the epoch spent waiting for batches
    # the CO monitor's probe and decisions (aaer.monitor)
    PROBE_CLEAN = "probe_clean_acc"
    PROBE_FGSM = "probe_fgsm_acc"
    PROBE_PGD = "probe_pgd_acc"
    PROBE_SECONDS = "probe_seconds"
    CO_FLAG = "co_flag"                  # CO was confirmed at this epoch's probe
    CO_EPOCH = "co_epoch"                # the first CO epoch of the run so far
    CO_CANDIDATE = "co_candidate"        # the probe met the rule, not yet confirmed
    CO_EVENTS = "co_events"
    CO_STOP = "co_stop"
    METHOD_CHANGES = "method_changes"    # what rollbacks changed in the method so far
    # the validation split (aaer.selection): the last weights, the averaged model
    VAL_CLEAN = "val_clean_acc"
    VAL_FGSM = "val_fgsm_acc"
    VAL_PGD = "val_pgd_acc"
    VAL_AVG_CLEAN = "val_avg_clean_acc"
    VAL_AVG_FGSM = "val_avg_fgsm_acc"
    VAL_AVG_PGD = "val_avg_pgd_acc"
    VAL_SECONDS = "val_seconds"
    VAL_SELECTED = "val_selected"        # the epoch's candidate became the selected model
    # what an epoch's line of train.log shows after the training columns
    LOGGED = (PROBE_CLEAN, PROBE_FGSM, PROBE_PGD, VAL_CLEAN, VAL_PGD, VAL_AVG_PGD)
    PROBES = (PROBE_CLEAN, PROBE_FGSM, PROBE_PGD)

    @staticmethod
    def probe_fields(record: dict[str, Any]) -> dict[str, float]:
        """A CO probe's accuracies (aaer.monitor's record) as metrics-row fields."""
        return {Row.PROBE_CLEAN: record["clean"], Row.PROBE_FGSM: record["fgsm"],
                Row.PROBE_PGD: record["pgd"]}


class Outcome(str, Enum):
    """What became of a monitored run, as code reads it (its sentence is rendered by the
    monitor and never parsed)."""

    NO_CO = "no-co"
    WARNED = "warned"                    # CO, --on-co warn
    STOPPED = "stopped"                  # CO, --on-co stop
    RESCUED = "rescued"                  # rollback(s), out of CO and robust at the end
    NOT_RESCUED = "not-rescued"          # CO again after the last rollback, diverged, or
                                         # out of CO but robust to nothing
    STILL_IN_CO = "still-in-co"          # rollback(s), yet in CO at the end

    @property
    def failed_rescue(self) -> bool:
        """A rollback run whose CO was not rescued (said as the run ends)."""
        return self in (Outcome.NOT_RESCUED, Outcome.STILL_IN_CO)


def aa_state_name(protocol: str) -> str:
    return f"autoattack_state_{protocol}.pt"


def eval_name(protocol: str) -> str:
    return f"eval_{protocol}.json"


class RunDir:
    """One run directory (it need not exist yet)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.file(name))

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.exists(RESULTS):
            return "finished"
        if self.exists(CHECKPOINT):
            return "interrupted"
        return "empty"

    def check_for(self, *, overwrite: bool, resume: bool) -> None:
        """May a run start (or resume) here? A finished run needs overwrite, an unfinished
        one resume or overwrite; resume needs config.json and checkpoint.pt."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--out-dir {self.path!r} is a file; valid: a new directory or a "
                             "run directory")
        state = self.state
        if resume:
            if not os.path.isdir(self.path):
                raise MissingFile(f"--resume {self.path!r}: no such run directory")
            if state == "finished":
                raise UsageError(f"--resume {self.path!r}: the run is finished (results.json), "
                                 "nothing to resume; evaluate it with `aaer eval`, or train it "
                                 "again with its flags and --overwrite")
            if not self.exists(CONFIG):
                raise MissingFile(f"--resume {self.path!r}: no config.json there; valid: "
                                        "a run directory written by `aaer train`")
            if state != "interrupted":
                raise MissingFile(f"--resume {self.path!r}: no checkpoint.pt there (the "
                                        "run stopped before its first checkpoint); start it "
                                        "again with its flags and --overwrite")
            return
        if overwrite:
            return
        if state == "finished":
            raise UsageError(f"out-dir {self.path!r} holds a finished run (results.json); "
                             "pass --overwrite to replace it or choose another --out-dir")
        if state == "interrupted":
            raise UsageError(f"out-dir {self.path!r} holds an unfinished run (checkpoint.pt); "
                             f"continue it with --resume {self.path}, pass --overwrite to "
                             "start again, or choose another --out-dir")

    def start(self) -> None:
        """A new run here: create the directory, remove what an earlier run left."""
        os.makedirs(self.path, exist_ok=True)
        for stale in (METRICS, RESULTS, MODEL, SELECTED, CHECKPOINT, BEST_PROBE, PROBES,
                      REWIND, WANDB):
            if self.exists(stale):
                os.remove(self.file(stale))

    # -- config.json -------------------------------------------------------------------
    _CONFIG_FIX = ("it is written by `aaer train` when a run starts; restore it, or train the "
                   "run again with its flags and --overwrite")

    def config(self) -> dict[str, Any]:
        """config.json as written (the resolved settings and what was built)."""
        return read_json(self.file(CONFIG), self._CONFIG_FIX)

    def settings(self, *, custom_data: bool = False) -> RunConfig:
        """The resolved run config.json describes (also of an aaer 0.1 run), validated."""
        raw = self.config()
        path = self.file(CONFIG)
        try:
            if raw.get("format") == CONFIG_FORMAT:
                cfg = from_dict(raw.get("settings") or {}, path)
                kinds = raw.get("source_kinds") or {}
                cfg.sources = {p: Source(str(t), kinds.get(p, Source.RECORDED))
                               for p, t in (raw.get("sources") or {}).items()}
                fill_older_run(cfg)
                for p, s, v in cfg.items():
                    if v is not UNSET and not (custom_data and p == "data.dataset"):
                        s.check(v)
                missing = [p for p, _, v in cfg.items() if v is UNSET]
                if missing:
                    shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
                    raise UsageError(f"{len(missing)} setting(s) missing: {shown}")
            elif "format" in raw:
                raise UsageError(f"unknown format {raw['format']!r}; valid: {CONFIG_FORMAT!r} "
                                 "(or an aaer 0.1 config without one)")
            else:
                cfg = legacy_settings(raw)
            validate(cfg, custom_data=custom_data)
        except (ValueError, TypeError) as e:
            raise DamagedFile(path, f"does not describe a valid run ({e})",
                              self._CONFIG_FIX) from None
        return cfg

    def write_config(self, cfg: RunConfig, built: dict[str, Any]) -> None:
        unnamed = sorted(set(built) - set(BUILT_KEYS))
        if unnamed:     # a record only BUILT_KEYS names would be read back as a setting
            raise TypeError(f"config.json records {unnamed} not named in runs.BUILT_KEYS")
        atomic_write_json(self.file(CONFIG), {**settings_record(cfg), **built})

    # -- metrics, probes, results --------------------------------------------------------
    _METRICS_FIX = ("it is written by `aaer train`, one line per epoch; restore it, or "
                    "resume from checkpoint.pt, which rewrites it")

    def metrics(self) -> list[dict[str, Any]]:
        rows = read_jsonl(self.file(METRICS), self._METRICS_FIX)
        for i, row in enumerate(rows):
            if not isinstance(row.get(Row.EPOCH), int) or isinstance(row.get(Row.EPOCH), bool):
                raise DamagedFile(self.file(METRICS), f"line {i + 1} has no integer 'epoch'",
                                  self._METRICS_FIX)
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.file(METRICS), row)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        import json
        atomic_write_bytes(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in rows).encode())

    def append_probe(self, record: dict[str, Any]) -> None:
        append_jsonl(self.file(PROBES), record)

    def probes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(PROBES))

    _RESULTS_FIX = ("it is written when training ends; restore it, or train the run again "
                    "with its flags and --overwrite")

    def results(self) -> dict[str, Any] | None:
        if not self.exists(RESULTS):
            return None
        res = read_json(self.file(RESULTS), self._RESULTS_FIX)
        ev = res.get("evaluation")
        if ev is not None and not (isinstance(ev, dict) and isinstance(ev.get("results"), dict)
                                   and all(isinstance(r, dict) for r in ev["results"].values())):
            raise DamagedFile(self.file(RESULTS), "its 'evaluation' is not an evaluation "
                              "report", self._RESULTS_FIX)
        if res.get("monitor") is not None and not isinstance(res["monitor"], dict):
            raise DamagedFile(self.file(RESULTS), "its 'monitor' is not a monitor summary",
                              self._RESULTS_FIX)
        return res

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULTS), results)

    # -- tensors ---------------------------------------------------------------------------
    def save_model(self, state: dict[str, torch.Tensor]) -> None:
        atomic_torch_save(self.file(MODEL), state)

    def save_selected(self, state: dict[str, torch.Tensor]) -> None:
        atomic_torch_save(self.file(SELECTED), state)

    def model_state(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.file(MODEL), "the final weights of a finished run; train the "
                            "run again with its flags and --overwrite")

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        write_checkpoint(self.file(CHECKPOINT), state)

    def read_checkpoint(self) -> dict[str, Any]:
        return read_checkpoint(self.file(CHECKPOINT))

    def save_best_probe(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.file(BEST_PROBE), state)

    def best_probe(self) -> dict[str, Any] | None:
        if not self.exists(BEST_PROBE):
            return None
        what = ("the CO monitor's best probe; without it a stop or rollback cannot restore: "
                "train the run again with --overwrite")
        state = load_tensors(self.file(BEST_PROBE), what)
        if not isinstance(state, dict) or not {"model", "optimizer", "probe"} <= set(state):
            raise DamagedFile(self.file(BEST_PROBE), "lacks the model, optimizer or probe "
                              "entries", what)
        return state

    def save_rewind(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.file(REWIND), {"format": CHECKPOINT_FORMAT, **state})

    def rewind_point(self) -> dict[str, Any] | None:
        if not self.exists(REWIND):
            return None
        return read_checkpoint(self.file(REWIND))

    def aa_state(self, protocol: str) -> str:
        return self.file(aa_state_name(protocol))

    @property
    def log_path(self) -> str:
        return self.file(LOG)

    @property
    def tensorboard_dir(self) -> str:
        return self.file(TENSORBOARD)

    # -- the W&B run (--wandb) ----------------------------------------------------------
    def wandb_run(self) -> dict[str, Any] | None:
        """wandb_run.json: {"id", "project", "entity"} of the W&B run this run logs to, or
        None when it has none yet."""
        if not self.exists(WANDB):
            return None
        fix = ("it is written by `aaer train --wandb`; delete it to log the resumed run to a "
               "new W&B run")
        rec = read_json(self.file(WANDB), fix)
        if not isinstance(rec.get("id"), str) or not rec["id"]:
            raise DamagedFile(self.file(WANDB), "has no W&B run 'id'", fix)
        return rec

    def write_wandb_run(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.file(WANDB), record)


def settings_record(cfg: RunConfig) -> dict[str, Any]:
    """config.json's record of a resolved run: its settings and where each came from."""
    return {"format": CONFIG_FORMAT, "settings": cfg.to_dict(),
            "sources": {p: str(v) for p, v in cfg.sources.items()},
            "source_kinds": {p: Source.of(v).kind for p, v in cfg.sources.items()}}


def load_tensors(path: str, what: str):
    """torch.load(weights_only=True) of ``path``, or DamagedFile saying what it was."""
    if not os.path.isfile(path):
        raise DamagedFile(path, "no such file", what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or pickled code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedFile(path, f"cannot be loaded with torch.load(weights_only=True): "
                          f"{first}", what) from None


def write_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``state`` (temp file + fsync + rename + dir fsync)."""
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, **state})
    fsync_dir(os.path.dirname(os.path.abspath(path)))


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "loader", "rng", "history",
                   "config", "data")


def read_checkpoint(path: str, *, complete: bool = True) -> dict[str, Any]:
    """A training checkpoint, loaded with weights_only=True; clear errors for anything else.
    ``complete``: it must hold everything a resume needs."""
    if not os.path.isfile(path):
        raise MissingFile(f"no checkpoint at {path}")
    what = ("only files written by aaer, loadable with torch.load(weights_only=True), are "
            "accepted; train the run again with its flags and --overwrite")
    state = load_tensors(path, what)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise DamagedFile(path, f"is not an aaer training checkpoint (format {found!r}; valid: "
                          f"{CHECKPOINT_FORMAT!r})", what)
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if complete else []
    if missing:
        raise DamagedFile(path, f"lacks {', '.join(missing)}", what)
    return state


def legacy_settings(flat: dict[str, Any]) -> RunConfig:
    """The resolved run of an aaer 0.1 config.json (or checkpoint config): its flat settings
    were already resolved; settings it predates take their defaults."""
    keep = {k: v for k, v in flat.items() if k not in BUILT_KEYS}
    keep.setdefault("method", "n-aaer")           # aaer 0.1's TrainConfig default
    cfg = from_flat(keep, source=Source("aaer 0.1 config.json", Source.RECORDED))
    for path, s, v in cfg.items():
        if path == "method.name":       # before it is built: a method since renamed is
            s.check(v)                  # refused by the schema's own check
        elif v is UNSET and path != "method.options":
            cfg.set(path, s.default, Source("default (not in an aaer 0.1 config.json)",
                                            Source.OLDER_RUN))
    complete_method(cfg)
    return cfg


def fill_older_run(cfg: RunConfig) -> RunConfig:
    """Settings added after a run was written get the value that aaer used then."""
    for p, s, v in cfg.items():
        if v is UNSET and s.older_runs is not UNSET:
            cfg.set(p, s.older_runs, Source("not in the run's files (written before the "
                                            "setting existed): what aaer did then",
                                            Source.OLDER_RUN))
    return cfg


def checkpoint_settings(ckpt: dict[str, Any]) -> RunConfig:
    """The settings a checkpoint was written with (nested now, flat in aaer 0.1)."""
    saved = ckpt.get("config") or {}
    if isinstance(saved, dict) and set(saved) <= set(RunConfig().to_dict()) and saved:
        return fill_older_run(from_dict(saved, "checkpoint.pt"))
    return legacy_settings(saved)


# -- a run read back (report, suite summary, demo) ---------------------------------------

@dataclass
class Run:
    """A run directory's contents: settings, raw config, metrics rows and results."""

    path: str
    settings: RunConfig
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    results: dict[str, Any] | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def has_probe(self) -> bool:
        return any(Row.PROBE_PGD in r for r in self.rows)

    def last_probe(self) -> dict[str, Any]:
        """The last metrics row with a CO probe ({} if none has one)."""
        return next((r for r in reversed(self.rows) if Row.PROBE_PGD in r), {})

    @property
    def method(self) -> str:
        return str(self.settings.method.name)

    @property
    def on_co(self) -> str:
        """The CO response it trained with: warn, stop or rollback."""
        return str(self.settings.monitor.on_co)

    @property
    def seed(self) -> int:
        return int(self.settings.optim.seed)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r[Row.EPOCH], r[key]) for r in self.rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def monitored(self) -> bool | None:
        """True/False: the CO monitor watched the run and did / did not flag CO; None: no
        monitor."""
        mon = (self.results or {}).get("monitor")
        if isinstance(mon, dict) and "co_detected" in mon:
            return bool(mon["co_detected"])
        if not any(Row.CO_FLAG in r for r in self.rows):
            return None
        return any(r.get(Row.CO_FLAG) for r in self.rows)

    def co_epoch(self) -> int | None:
        """The epoch CO began (the first probe of the confirmed run), or None."""
        mon = (self.results or {}).get("monitor")
        if isinstance(mon, dict) and "co_epoch" in mon:
            return mon.get("co_epoch")
        epochs = [r[Row.CO_EPOCH] for r in self.rows if r.get(Row.CO_EPOCH) is not None]
        if epochs:
            return epochs[0]
        flagged = [r.get(Row.CO_EPOCH, r[Row.EPOCH]) for r in self.rows if r.get(Row.CO_FLAG)]
        return flagged[0] if flagged else None

    def rolled_back(self) -> bool:
        """Did a rollback discard epochs of this run (its CO epochs with them)?"""
        mon = (self.results or {}).get("monitor")
        return isinstance(mon, dict) and bool(mon.get("rollbacks"))

    def co_events(self) -> list[dict]:
        mon = (self.results or {}).get("monitor")
        if isinstance(mon, dict):
            return list(mon.get("events", []))
        return [e for r in self.rows for e in r.get(Row.CO_EVENTS, [])]

    def outcome(self) -> Outcome | None:
        """What became of the run's CO (None: no monitor summary). Runs written before the
        outcome had a kind are read from their summary's facts, not from its sentence."""
        mon = (self.results or {}).get("monitor")
        if not isinstance(mon, dict):
            return None
        if "outcome_kind" in mon:
            return Outcome(mon["outcome_kind"])
        if not mon.get("co_detected"):
            return Outcome.NO_CO
        on_co = mon.get("probe", {}).get("on_co", self.on_co)
        if on_co == "warn":
            return Outcome.WARNED
        if mon.get("rescued"):
            return Outcome.RESCUED
        if on_co == "stop":
            return Outcome.STOPPED
        if mon.get("stopped") is None and mon.get("ends_in_co"):
            return Outcome.STILL_IN_CO
        return Outcome.NOT_RESCUED


def load_run(path: str, *, need_epochs: bool = True) -> Run:
    """Read one run directory; FileNotFoundError/ValueError saying what is missing."""
    if not os.path.isdir(path):
        raise MissingFile(f"run directory {path!r} does not exist")
    run = RunDir(path)
    if not run.exists(CONFIG):
        raise MissingFile(f"{path!r} is not a run directory: it has no config.json "
                                "(give directories written by `aaer train` or `aaer demo`)")
    settings = run.settings(custom_data=True)
    rows = run.metrics()
    if need_epochs and not rows:
        raise UsageError(f"run {path!r} has no finished epoch yet (metrics.jsonl is missing "
                         "or empty)")
    return Run(path=path, settings=settings, config=run.config(), rows=rows,
               results=run.results())
