"""Weights & Biases logging while a run trains (``aaer train --wandb``; the ``wandb`` extra).

``WandbListener`` is a listener of the trainer (aaer.engine.Trainer), beside TensorBoard's
LiveWriter. It logs to one W&B run:

- the settings with their sources (config.json's ``settings``, ``sources`` and
  ``source_kinds``) as the run's config when it starts, and what the settings built
  (config.json's other entries: the method's resolved hyper-parameters, the data, the
  environment) at the first epoch or probe;
- every epoch's metrics row (metrics.jsonl's names, aaer.runs.Row) against the axis
  ``epoch``;
- every CO-monitor probe (``probe_by_step/*``) and CO event (``co/*``) against the axis
  ``optimizer_step``, the optimiser step they were taken after; the events so far are also
  in the summary (``co/events``);
- the final results (``results``): the evaluation's accuracies (``eval/<attack>_acc``, and
  ``eval_selected/...`` for the validation's choice), the training cost and the monitor's
  outcome, in the summary.

The W&B run's id is kept in the run directory (wandb_run.json, written at the first epoch
or probe): ``aaer train --resume`` continues the same W&B run (resume="allow"). A resumed
run that had no W&B run yet gets a new one, which is first given the epochs and probes
trained so far. W&B's files go to <out-dir>/wandb unless WANDB_DIR says otherwise; the
project, entity and mode left at aaer's defaults yield to WANDB_PROJECT, WANDB_ENTITY and
WANDB_MODE, as in any W&B run, and an explicit --wandb-project/-entity/-mode wins over them.
"""
from __future__ import annotations

import math
import os
from typing import Any

from aaer.config import RunConfig
from aaer.config.schema import WANDB_MODES
from aaer.config.settings import Source
from aaer.errors import UsageError, require
from aaer.runs import CONFIG, Row, RunDir, settings_record

EPOCH_AXIS = Row.EPOCH
STEP_AXIS = "optimizer_step"
# a probe record's fields (aaer.monitor) -> the W&B key, logged against STEP_AXIS
PROBE_KEYS = {"clean": "probe_by_step/clean_acc", "fgsm": "probe_by_step/fgsm_acc",
              "pgd": "probe_by_step/pgd_acc", "seconds": "probe_by_step/seconds",
              "epoch": "probe_by_step/epoch", Row.CO_CANDIDATE: "probe_by_step/co_candidate"}
# W&B's older names of its modes
ENV_MODES = {"dryrun": "offline", "run": "online"}
# config.json's record of the settings; its other entries are what the settings built
SETTINGS_KEYS = ("format", "settings", "sources", "source_kinds")


def require_wandb():
    """The wandb module, or MissingExtra (one line naming `pip install 'aaer[wandb]'`)."""
    return require("wandb", "wandb", "wandb", "--wandb")


def wandb_setting(cfg: RunConfig, name: str):
    """--wandb-<name> (project, entity, mode) as given, else W&B's environment variable
    (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE), else aaer's default."""
    path = f"runtime.wandb_{name}"
    value = cfg.get(path)
    if Source.of(cfg.sources.get(path, Source.DEFAULT)).kind in (Source.DEFAULT,
                                                                  Source.OLDER_RUN):
        env = os.environ.get(f"WANDB_{name.upper()}")
        if env:
            value = ENV_MODES.get(env, env) if name == "mode" else env
    if name == "mode" and value not in WANDB_MODES:
        raise UsageError(f"invalid $WANDB_MODE {os.environ.get('WANDB_MODE')!r}; valid: "
                         f"{', '.join(WANDB_MODES)} (or pass --wandb-mode)")
    return value


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float | int]:
    """The finite numbers of a metrics row (bools as 0/1; a dict's numbers as
    ``key/name``); lists, strings and None are left out."""
    out: dict[str, float | int] = {}
    for key, v in values.items():
        if isinstance(v, bool):
            out[prefix + key] = int(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[prefix + key] = v
        elif isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{key}/"))
    return out


def event_scalars(event: dict[str, Any]) -> dict[str, float | int]:
    """A CO event's numbers (aaer.monitor), logged at the step that confirmed it."""
    ev = event.get("evidence") or {}
    out = {"co/event": 1, "co/event_epoch": event["epoch"], "co/onset_epoch": event["onset_epoch"],
           "co/onset_step": event["onset_step"]}
    out.update(scalars({k: ev[k] for k in ("pgd_now", "pgd_ref", "pgd_drop", "threshold",
                                            "fgsm_now", "fgsm_ref", "ref_epoch")
                        if k in ev}, "co/"))
    return out


class WandbListener:
    """Listener of the trainer logging one aaer run to one W&B run (see the module
    docstring). ``resume``: the run continues from its checkpoint, and so does its W&B run
    (wandb_run.json)."""

    def __init__(self, run: RunDir, cfg: RunConfig, *, resume: bool = False):
        wandb = require_wandb()
        self.run_dir = run
        self.events: list[dict[str, Any]] = []
        self.defined: set[str] = set()
        self.finished = self.begun = False
        # everything is passed explicitly: wandb reads its environment once per process
        chosen = {"project": wandb_setting(cfg, "project"),
                  "entity": wandb_setting(cfg, "entity"), "mode": wandb_setting(cfg, "mode")}
        known = run.wandb_run() if resume else None
        if known:                           # a resumed W&B run keeps its project
            chosen.update(id=known["id"], resume="allow", project=known.get("project"),
                          entity=known.get("entity"))
        where = os.environ.get("WANDB_DIR") or run.path
        os.makedirs(where, exist_ok=True)
        try:
            self.wb = wandb.init(
                dir=where, name=os.path.basename(os.path.abspath(run.path)), job_type="train",
                tags=[str(cfg.method.name), str(cfg.data.dataset), str(cfg.model.name)],
                config=settings_record(cfg), allow_val_change=True, reinit="create_new",
                settings=wandb.Settings(console="off"), **chosen)
        except wandb.errors.Error as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"--wandb could not start a W&B run ({first}); log in with "
                             "`wandb login` (or set WANDB_API_KEY), or pass --wandb-mode "
                             "offline to log locally and upload later with `wandb sync`") \
                from None
        self.id, self.mode = self.wb.id, self.wb.settings.mode
        self.wb.define_metric(EPOCH_AXIS)
        self.wb.define_metric(STEP_AXIS)
        if resume and known is None:        # a new W&B run for a run trained so far
            self._begin()
            for row in run.metrics():
                self._epoch(row)
            for record in run.probes():
                self._probe(record)

    # -- the trainer's calls ------------------------------------------------------------
    def epoch(self, row: dict[str, Any]) -> None:
        self._begin()
        self._epoch(row)

    def probe(self, record: dict[str, Any]) -> None:
        self._begin()
        self._probe(record)

    def results(self, results: dict[str, Any]) -> None:
        """The run's results (results.json) into the W&B run's summary."""
        self._begin()
        out: dict[str, Any] = {}
        for name in ("evaluation", "evaluation_selected"):
            report = results.get(name)
            if not report:
                continue
            key = "eval" if name == "evaluation" else "eval_selected"
            out.update({f"{key}/protocol": report["protocol"]["name"], f"{key}/n": report["n"],
                        f"{key}/eps": report["eps"], f"{key}/norm": report.get("norm", "linf")})
            for attack, r in report["results"].items():
                out[f"{key}/{attack}_acc"] = r["acc"]
                for step, acc in (r.get("per_attack") or {}).items():
                    out[f"{key}/{attack}_after/{step}"] = acc
        out.update(scalars({k: results[k] for k in ("train_seconds", "seconds_per_epoch",
                                                      "epochs_trained") if k in results}))
        out.update(scalars(results.get("cost") or {}, "cost/"))
        mon = results.get("monitor")
        if mon:
            self.events = list(mon.get("events", []))
            out.update({"co/detected": bool(mon.get("co_detected")),
                        "co/epoch": mon.get(Row.CO_EPOCH), "co/outcome": mon.get("outcome"),
                        "co/rollbacks": len(mon.get("rollbacks") or []),
                        "co/events": self.events})
        self.wb.summary.update(out)
        self.finished = True

    def close(self) -> None:
        """Finish the W&B run: exit code 0 once the results came, 1 otherwise (a run that
        stopped early; a resume continues it)."""
        if self.wb is None:
            return
        self._remember()
        self.wb.finish(exit_code=0 if self.finished else 1)
        self.wb = None

    # -- parts ----------------------------------------------------------------------------
    def _begin(self) -> None:
        """Once, at the first epoch or probe (config.json is written by then): what the
        settings built into the config, and the W&B run's id into the run directory."""
        if self.begun:
            return
        self.begun = True
        self._remember()
        if self.run_dir.exists(CONFIG):
            built = {k: v for k, v in self.run_dir.config().items() if k not in SETTINGS_KEYS}
            self.wb.config.update(built, allow_val_change=True)

    def _remember(self) -> None:
        if self.mode != "disabled":
            self.run_dir.write_wandb_run({"id": self.id, "project": self.wb.project,
                                          "entity": self.wb.entity or None,
                                          "mode": self.mode})

    def _define(self, keys, axis: str) -> None:
        for key in keys:
            if key not in self.defined and key not in (EPOCH_AXIS, STEP_AXIS):
                self.wb.define_metric(key, step_metric=axis)
                self.defined.add(key)

    def _epoch(self, row: dict[str, Any]) -> None:
        values = scalars(row)
        self._define(values, EPOCH_AXIS)
        self.wb.log(values)
        new = row.get(Row.CO_EVENTS) or []
        for event in new:
            values = {STEP_AXIS: event["step"], **event_scalars(event)}
            self._define(values, STEP_AXIS)
            self.wb.log(values)
        if new:
            self.events.extend(new)
            self.wb.summary["co/events"] = self.events

    def _probe(self, record: dict[str, Any]) -> None:
        values = {STEP_AXIS: record["step"],
                  **scalars({PROBE_KEYS[k]: v for k, v in record.items() if k in PROBE_KEYS})}
        self._define(values, STEP_AXIS)
        self.wb.log(values)
