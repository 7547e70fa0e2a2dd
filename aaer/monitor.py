"""Catastrophic-overfitting (CO) monitor: a PGD/FGSM probe, a CO rule and the responses.

Each epoch (and, optionally, every N optimiser steps) the monitor measures clean, FGSM
and PGD-k accuracy of the model (eval mode) on one fixed held-out batch that training
never sees: the first N test points (``probe_source="test"``) or N training images
excluded from training (``"holdout"``). The PGD random start is drawn from a generator
seeded once, so every probe sees the same starting noise.

CO rule (SPEC §7, after Wong et al. 2020's early stop): the probe's PGD accuracy has
dropped below a reference -- its best so far (default) or the last probe before the
drop (as in Wong et al.'s code) -- by more than min(``drop``, max(``rel_drop`` x
reference, ``min_drop``)) = min(0.2, max(0.75 x reference, 0.05)), on ``patience`` (2)
consecutive probes, while FGSM accuracy has stayed high: since the reference it fell by
less than ``fgsm_ratio`` (0.5) times the PGD fall (a rise always counts as high).
- The relative threshold matters only for weakly robust models (best PGD accuracy under
  0.27): Wong et al.'s absolute 0.2 can never fire when the best is below 0.2, however
  completely PGD accuracy then collapses. ``min_drop`` keeps it from firing on a few
  points' noise in a model that was never robust (best under 0.05: no CO to detect).
- Patience 2 ignores a single noisy dip (seen early in training at CPU scale); the CO
  epoch reported is the first probe of the confirmed run of CO probes.
- The FGSM clause separates CO (still robust to the single-step attack, broken by PGD)
  from a run that simply diverges (every accuracy falls together).
A second clause catches runs that are in CO from their first probe, so have no robust
best to fall from (zero-start FGSM at a large eps): probe PGD accuracy at most ``floor``
(0.05) while FGSM accuracy is at least ``gap`` (0.25) above it -- robust to the
single-step attack, not to the multi-step one -- on ``patience`` consecutive probes.
``CORule(reference="previous", rel_drop=None, patience=1, fgsm_ratio=None, gap=None)`` is
Wong et al.'s rule exactly.

Responses when the rule fires:
- ``warn``: log it and record the evidence (metrics.jsonl, results.json).
- ``stop``: restore the weights of the best probe (as Wong et al.'s early stop does),
  end training there; model.pt and the final evaluation use those weights.
- ``rollback``: restore the best probe's weights and optimiser state, make the
  method's step smaller (alpha x ``rollback_step_factor``) or its regulariser stronger
  (lamda1 x ``rollback_reg_factor``, AAER methods) and continue; after
  ``max_rollbacks`` rollbacks the next CO stops the run.
Every decision is logged and recorded.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aaer.io import append_jsonl, atomic_torch_save

CO_RESPONSES = ("warn", "stop", "rollback")
CO_REFERENCES = ("best", "previous")
PROBE_SOURCES = ("test", "holdout")
ROLLBACK_CHANGES = ("auto", "step", "regularizer")


@dataclass(frozen=True)
class CORule:
    """When a probe counts as catastrophic overfitting (see the module docstring)."""

    drop: float = 0.2
    reference: str = "best"
    fgsm_ratio: float | None = 0.5
    rel_drop: float | None = 0.75
    patience: int = 2
    min_drop: float = 0.05
    gap: float | None = 0.25
    floor: float = 0.05

    def __post_init__(self):
        if not (0 < self.drop < 1):
            raise ValueError(f"invalid CO drop {self.drop!r}: must be in (0, 1) (an accuracy "
                             "difference, e.g. 0.2)")
        if self.reference not in CO_REFERENCES:
            raise ValueError(f"invalid CO reference {self.reference!r}; valid: "
                             f"{', '.join(CO_REFERENCES)}")
        if self.fgsm_ratio is not None and not (0 < self.fgsm_ratio <= 1):
            raise ValueError(f"invalid CO fgsm ratio {self.fgsm_ratio!r}: must be in (0, 1] "
                             "or None (not checked)")
        if self.rel_drop is not None and not (0 < self.rel_drop <= 1):
            raise ValueError(f"invalid CO relative drop {self.rel_drop!r}: must be in (0, 1] "
                             "or None (absolute drop only)")
        if not (0 <= self.min_drop <= self.drop):
            raise ValueError(f"invalid CO min drop {self.min_drop!r}: must be in [0, drop]")
        if self.gap is not None and not (0 < self.gap <= 1):
            raise ValueError(f"invalid CO gap {self.gap!r}: must be in (0, 1] or None (the "
                             "masked clause off)")
        if not (0 <= self.floor < 1):
            raise ValueError(f"invalid CO floor {self.floor!r}: must be in [0, 1) (a PGD "
                             "accuracy, e.g. 0.05)")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or \
                self.patience < 1:
            raise ValueError(f"invalid CO patience {self.patience!r}: must be an integer >= 1 "
                             "(consecutive probes)")

    def describe(self) -> str:
        ref = "its best so far" if self.reference == "best" else "the probe before the drop"
        by = f"{self.drop:g}" if self.rel_drop is None else \
            f"min({self.drop:g}, max({self.rel_drop:g} x that accuracy, {self.min_drop:g}))"
        text = f"probe PGD accuracy more than {by} below {ref}"
        if self.patience > 1:
            text += f" on {self.patience} consecutive probes"
        if self.fgsm_ratio is not None:
            text += (f", while probe FGSM accuracy fell by less than {self.fgsm_ratio:g} times "
                     "as much")
        if self.gap is not None:
            text += (f"; or probe PGD accuracy at most {self.floor:g} while FGSM accuracy is at "
                     f"least {self.gap:g} above it")
            if self.patience > 1:
                text += f" on {self.patience} consecutive probes"
        return text

    def threshold(self, ref_pgd: float) -> float:
        if self.rel_drop is None:
            return self.drop
        return min(self.drop, max(self.rel_drop * ref_pgd, self.min_drop))

    def check(self, history: list[dict], current: dict, pending: int = 0) -> dict | None:
        """Evidence (a dict) if ``current`` meets the rule given the earlier probes, else None.

        ``pending``: how many of the latest probes in ``history`` already met it (they are
        not a "previous" reference). Patience is counted by the caller.
        """
        earlier = history[:len(history) - pending]
        ref = None
        if earlier:
            ref = max(earlier, key=lambda r: r["pgd"]) if self.reference == "best" \
                else earlier[-1]                          # max: the first of equal bests
        evidence = self._drop_clause(ref, current) if ref is not None else None
        if evidence is None:
            evidence = self._masked_clause(ref, current)
        return evidence

    def _evidence(self, clause: str, ref: dict, current: dict) -> dict:
        return {"clause": clause, "pgd_now": current["pgd"], "pgd_ref": ref["pgd"],
                "pgd_drop": round(ref["pgd"] - current["pgd"], 6),
                "threshold": round(self.threshold(ref["pgd"]), 6),
                "ref_epoch": ref["epoch"], "ref_step": ref["step"], "fgsm_now": current["fgsm"],
                "fgsm_ref": ref["fgsm"], "clean_now": current["clean"],
                "clean_ref": ref["clean"], "rule": self.describe()}

    def _drop_clause(self, ref: dict, current: dict) -> dict | None:
        drop = ref["pgd"] - current["pgd"]
        if not drop > self.threshold(ref["pgd"]):
            return None
        if self.fgsm_ratio is not None and \
                not ref["fgsm"] - current["fgsm"] < self.fgsm_ratio * drop:
            return None
        return self._evidence("drop", ref, current)

    def _masked_clause(self, ref: dict | None, current: dict) -> dict | None:
        if self.gap is None or not current["pgd"] <= self.floor or \
                not current["fgsm"] - current["pgd"] >= self.gap:
            return None
        ev = self._evidence("masked", current if ref is None else ref, current)
        ev["fgsm_gap"] = round(current["fgsm"] - current["pgd"], 6)
        return ev


def evidence_text(ev: dict, digits: int = 4) -> str:
    """One phrase saying why a probe met the CO rule (for logs, reports and the demo)."""
    f = lambda v: f"{v:.{digits}f}"
    if ev.get("clause") == "masked":
        return (f"probe PGD accuracy {f(ev['pgd_now'])} while FGSM accuracy is "
                f"{f(ev['fgsm_now'])} (robust to FGSM, not to PGD; best PGD so far "
                f"{f(ev['pgd_ref'])} at epoch {ev['ref_epoch']})")
    return (f"probe PGD accuracy {f(ev['pgd_ref'])} at epoch {ev['ref_epoch']} -> "
            f"{f(ev['pgd_now'])}, while FGSM accuracy {f(ev['fgsm_ref'])} -> {f(ev['fgsm_now'])}")


def select_probe_data(source: str, n: int, train_x, train_y, test_x, test_y,
                      n_train: int | None = None):
    """The probe batch and the training set that remains.

    Returns (probe_x, probe_y, train_x, train_y, description). ``holdout`` takes the n
    images that follow the first ``n_train`` when the data set has them (training is
    unchanged), else the last n of the training images, which are then not trained on.
    """
    if source not in PROBE_SOURCES:
        raise ValueError(f"invalid --probe-source {source!r}; valid: {', '.join(PROBE_SOURCES)}")
    if n < 1:
        raise ValueError(f"invalid --probe-n {n!r}: must be >= 1")
    if source == "test":
        if n > test_x.shape[0]:
            raise ValueError(f"--probe-n {n} exceeds the {test_x.shape[0]} test points")
        kept_x = train_x[:n_train] if n_train is not None else train_x
        kept_y = train_y[:n_train] if n_train is not None else train_y
        return test_x[:n], test_y[:n], kept_x, kept_y, f"the first {n} test points"
    total = train_x.shape[0]
    used = total if n_train is None else min(n_train, total)
    if used + n <= total and n_train is not None:
        return (train_x[used:used + n], train_y[used:used + n], train_x[:used], train_y[:used],
                f"training images {used}..{used + n - 1} (not among the {used} trained on)")
    if n >= used:
        raise ValueError(f"--probe-n {n} with --probe-source holdout leaves no training "
                         f"images (only {used}); lower --probe-n")
    return (train_x[used - n:used], train_y[used - n:used], train_x[:used - n],
            train_y[:used - n], f"the last {n} of {used} training images, held out of training")


class COMonitor:
    """Probe + CO rule + response for one run (see the module docstring).

    The trainer calls ``after_step`` after every minibatch (a no-op unless
    ``every_steps``) and ``end_epoch`` with each finished epoch's metrics row.
    """

    def __init__(self, x, y, eps: float, *, pgd_steps: int = 10, pgd_alpha: float | None = None,
                 rule: CORule = CORule(), on_co: str = "warn", every_steps: int = 0,
                 seed: int = 0, source: str = "", batch_size: int | None = 256,
                 rollback_change: str = "auto", rollback_step_factor: float = 0.75,
                 rollback_reg_factor: float = 2.0, max_rollbacks: int = 2):
        if on_co not in CO_RESPONSES:
            raise ValueError(f"invalid --on-co {on_co!r}; valid: {', '.join(CO_RESPONSES)}")
        if rollback_change not in ROLLBACK_CHANGES:
            raise ValueError(f"invalid --rollback-change {rollback_change!r}; valid: "
                             f"{', '.join(ROLLBACK_CHANGES)}")
        if pgd_steps < 1:
            raise ValueError(f"invalid --probe-steps {pgd_steps!r}: must be >= 1")
        if every_steps < 0:
            raise ValueError(f"invalid --probe-every {every_steps!r}: must be >= 0 (0: once "
                             "per epoch)")
        if not (0 < rollback_step_factor < 1):
            raise ValueError(f"invalid --rollback-step-factor {rollback_step_factor!r}: must "
                             "be in (0, 1)")
        if not rollback_reg_factor > 1:
            raise ValueError(f"invalid --rollback-reg-factor {rollback_reg_factor!r}: must "
                             "be > 1")
        if max_rollbacks < 0:
            raise ValueError(f"invalid --max-rollbacks {max_rollbacks!r}: must be >= 0")
        self.x, self.y, self.eps = x, y, float(eps)
        self.pgd_steps = int(pgd_steps)
        self.pgd_step255 = None if pgd_alpha is None else float(pgd_alpha) * 255  # None: eps/4
        self.pgd_alpha = float(pgd_alpha) if pgd_alpha is not None else self.eps / 4
        self.rule, self.on_co, self.every_steps = rule, on_co, int(every_steps)
        self.seed, self.source, self.batch_size = seed, source, batch_size
        self.rollback_change = rollback_change
        self.rollback_step_factor = rollback_step_factor
        self.rollback_reg_factor = rollback_reg_factor
        self.max_rollbacks = max_rollbacks
        self.history: list[dict] = []        # every probe: epoch, step, clean, fgsm, pgd
        self.events: list[dict] = []         # every CO flag with its evidence and response
        self.rollbacks: list[dict] = []
        self.co_epoch: int | None = None     # the epoch of the first CO flag
        self.stopped: dict | None = None
        self.should_stop = False
        self._best_state: dict | None = None
        self._best: dict | None = None
        self._reported = 0                   # events already written into a metrics row
        self._streak: list[dict] = []        # the latest consecutive probes meeting the rule

    # -- description ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"n": int(self.x.shape[0]), "source": self.source, "pgd_steps": self.pgd_steps,
                "pgd_restarts": 1, "pgd_alpha": self.pgd_alpha, "eps": self.eps,
                "pgd_start": "uniform", "fgsm": "zero start, step eps", "seed": self.seed,
                "every_steps": self.every_steps, "rule": {**asdict(self.rule),
                                                          "text": self.rule.describe()},
                "on_co": self.on_co}

    # -- measuring -----------------------------------------------------------------
    def measure(self, model) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy on the probe batch (the model's mode is kept)."""
        from aaer.evaluate import Protocol, evaluate
        p = Protocol("probe", pgd_steps=self.pgd_steps, pgd_restarts=1,
                     pgd_step255=self.pgd_step255, attacks=("clean", "fgsm", "pgd"))
        t0 = time.perf_counter()
        rep = evaluate(model, self.x, self.y, self.eps, p, batch_size=self.batch_size,
                       seed=self.seed)["results"]
        return {"clean": rep["clean"]["acc"], "fgsm": rep["fgsm"]["acc"],
                "pgd": rep["pgd"]["acc"], "seconds": round(time.perf_counter() - t0, 3)}

    def observe(self, trainer, epoch: int, step: int) -> dict:
        """Probe now, apply the rule and respond; returns the probe record."""
        rec = {"epoch": epoch, "step": step, **self.measure(trainer.model)}
        evidence = self.rule.check(self.history, rec, pending=len(self._streak))
        self.history.append(rec)
        if evidence is None:
            self._streak = []
            if self._best is None or rec["pgd"] > self._best["pgd"]:
                self._remember_best(trainer, rec)
            return rec
        self._streak.append(rec)
        rec["co_candidate"] = True
        if len(self._streak) < self.rule.patience:
            trainer.log.info("CO candidate at epoch %d: %s; CO if the next probe agrees "
                             "(patience %d)", epoch, evidence_text(evidence), self.rule.patience)
            return rec
        rec["co"] = True
        onset = self._streak[0]
        if self.co_epoch is None:
            self.co_epoch = onset["epoch"]
        event = {"epoch": epoch, "step": step, "onset_epoch": onset["epoch"],
                 "onset_step": onset["step"], "evidence": evidence, "response": self.on_co}
        self._respond(trainer, event)
        self.events.append(event)
        if self.on_co != "warn":           # weights were restored: a new run must build up
            self._streak = []
        return rec

    def _remember_best(self, trainer, rec: dict) -> None:
        self._best = dict(rec)
        self._best_state = {
            "epoch": rec["epoch"], "step": rec["step"], "probe": dict(rec),
            "model": {k: v.detach().to("cpu", copy=True)
                      for k, v in trainer.model.net.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.opt.state_dict()),
        }
        atomic_torch_save(trainer.path("best_probe.pt"), self._best_state)

    # -- responses -----------------------------------------------------------------
    def _restore_best(self, trainer, with_optimizer: bool) -> dict:
        state = self._best_state
        if state is None:          # only after a resume that lost best_probe.pt
            raise RuntimeError("CO flagged but the best probe's weights are not available "
                               "(best_probe.pt is missing from the run directory)")
        trainer.model.net.load_state_dict(state["model"])
        if with_optimizer:
            # keep the schedule where it is: the restored state carries stale lr/momentum
            now = [{k: g[k] for k in ("lr", "momentum", "betas") if k in g}
                   for g in trainer.opt.param_groups]
            trainer.opt.load_state_dict(copy.deepcopy(state["optimizer"]))
            for g, keep in zip(trainer.opt.param_groups, now):
                g.update(keep)
        return {"epoch": state["epoch"], "step": state["step"], "pgd": state["probe"]["pgd"]}

    def _rollback_target(self, method) -> tuple[str, str, float]:
        """(knob, attribute, factor) of the change a rollback makes to ``method``."""
        change = self.rollback_change
        if change == "auto":
            change = "regularizer" if hasattr(method, "lamda1") else "step"
        if change == "regularizer":
            if not hasattr(method, "lamda1"):
                raise ValueError(f"--rollback-change regularizer: method {method.name!r} has "
                                 "no regulariser weight (lamda1); use step")
            return "regularizer", "lamda1", self.rollback_reg_factor
        if not hasattr(method, "alpha"):
            raise ValueError(f"--on-co rollback: method {method.name!r} has no attack step "
                             "(alpha) to shrink; use --on-co warn or stop")
        return "step", "alpha", self.rollback_step_factor

    def check_method(self, method) -> None:
        """Fail before training if a rollback could not be applied to this method."""
        if self.on_co == "rollback":
            self._rollback_target(method)

    def _respond(self, trainer, event: dict) -> None:
        log = trainer.log
        ev = event["evidence"]
        where = f"epoch {event['epoch']}" + (f" step {event['step']}" if self.every_steps else "")
        log.warning("CO detected at %s (since epoch %d): %s; clean acc %.4f", where,
                    event["onset_epoch"], evidence_text(ev), ev["clean_now"])
        response = self.on_co
        if response == "rollback" and len(self.rollbacks) >= self.max_rollbacks:
            log.warning("CO again after %d rollbacks (--max-rollbacks): stopping",
                        len(self.rollbacks))
            response = "stop"
            event["response"] = "stop (max rollbacks reached)"
        if response == "stop":
            restored = self._restore_best(trainer, with_optimizer=False)
            self.stopped = {"epoch": event["epoch"], "step": event["step"],
                            "restored_from": restored}
            self.should_stop = True
            event["restored_from"] = restored
            log.warning("--on-co stop: weights of the best probe (epoch %d, PGD acc %.4f) "
                        "restored; training ends", restored["epoch"], restored["pgd"])
        elif response == "rollback":
            knob, attr, factor = self._rollback_target(trainer.method)
            restored = self._restore_best(trainer, with_optimizer=True)
            old = float(getattr(trainer.method, attr))
            setattr(trainer.method, attr, old * factor)
            rb = {"epoch": event["epoch"], "step": event["step"], "restored_from": restored,
                  "change": knob, "param": attr, "old": old, "new": old * factor}
            self.rollbacks.append(rb)
            event["rollback"] = rb
            log.warning("--on-co rollback: weights and optimiser state of the best probe "
                        "(epoch %d, PGD acc %.4f) restored; %s %g -> %g; training continues",
                        restored["epoch"], restored["pgd"], attr, old, old * factor)

    # -- the trainer's hooks ---------------------------------------------------------
    def after_step(self, trainer, epoch: int, i: int) -> bool:
        """Probe every ``every_steps`` optimiser steps; True when training must stop now."""
        if not self.every_steps:
            return False
        step = epoch * len(trainer.loader) + i + 1
        if step % self.every_steps:
            return False
        rec = self.observe(trainer, epoch, step)
        append_jsonl(trainer.path("probes.jsonl"), rec)
        return self.should_stop

    def end_epoch(self, trainer, row: dict) -> None:
        """Probe at the end of an epoch (unless a mid-epoch probe stopped training) and
        write the probe, the CO flag and any response into the epoch's metrics row."""
        epoch = row["epoch"]
        step = (epoch + 1) * len(trainer.loader)
        if self.should_stop or (self.history and self.history[-1]["step"] == step):
            rec = self.history[-1]           # stopped mid-epoch, or probed at this very step
        else:
            rec = self.observe(trainer, epoch, step)
            if self.every_steps:
                append_jsonl(trainer.path("probes.jsonl"), rec)
        row.update({"probe_clean_acc": rec["clean"], "probe_fgsm_acc": rec["fgsm"],
                    "probe_pgd_acc": rec["pgd"], "probe_seconds": rec["seconds"],
                    "co_flag": len(self.events) > self._reported, "co_epoch": self.co_epoch,
                    "co_candidate": bool(rec.get("co_candidate"))})
        new = self.events[self._reported:]
        self._reported = len(self.events)
        if new:
            row["co_events"] = new
        if self.method_changes():
            row["method_changes"] = self.method_changes()
        if self.should_stop:
            row["co_stop"] = True

    def method_changes(self) -> dict[str, float]:
        """The method settings rollbacks have changed so far: attribute -> current value."""
        return {rb["param"]: rb["new"] for rb in self.rollbacks}

    # -- records ---------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        best = self._best
        return {"probe": self.describe(), "co_detected": self.co_epoch is not None,
                "co_epoch": self.co_epoch, "events": self.events, "rollbacks": self.rollbacks,
                "stopped": self.stopped,
                "best_probe": None if best is None else {
                    k: best[k] for k in ("epoch", "step", "clean", "fgsm", "pgd")},
                "final_probe": None if not self.history else {
                    k: self.history[-1][k] for k in ("epoch", "step", "clean", "fgsm", "pgd")}}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (the best probe's weights are in best_probe.pt)."""
        return {"history": self.history, "events": self.events, "rollbacks": self.rollbacks,
                "co_epoch": self.co_epoch, "stopped": self.stopped, "best": self._best,
                "streak": self._streak}

    def load_state_dict(self, state: dict[str, Any], trainer=None) -> None:
        """Restore the monitor; with ``trainer``, re-apply rollback changes to its method
        and reload the best probe's weights from best_probe.pt."""
        self.history = list(state.get("history", []))
        self.events = list(state.get("events", []))
        self.rollbacks = list(state.get("rollbacks", []))
        self.co_epoch = state.get("co_epoch")
        self.stopped = state.get("stopped")
        self.should_stop = self.stopped is not None
        self._reported = len(self.events)
        self._best = state.get("best")
        self._streak = list(state.get("streak", []))
        if trainer is not None:
            for attr, value in self.method_changes().items():
                setattr(trainer.method, attr, value)
            path = trainer.path("best_probe.pt")
            if os.path.exists(path):
                self._best_state = torch.load(path, map_location="cpu", weights_only=True)


def validate_monitor_config(cfg) -> None:
    """Check a TrainConfig's monitor settings (raises ValueError naming the bad value)."""
    if cfg.probe_source not in PROBE_SOURCES:
        raise ValueError(f"invalid --probe-source {cfg.probe_source!r}; valid: "
                         f"{', '.join(PROBE_SOURCES)}")
    if cfg.on_co not in CO_RESPONSES:
        raise ValueError(f"invalid --on-co {cfg.on_co!r}; valid: {', '.join(CO_RESPONSES)}")
    if cfg.on_co != "warn" and not cfg.probe_n:
        raise ValueError(f"--on-co {cfg.on_co} needs the CO probe: set --probe-n N (e.g. 500)")
    if cfg.probe_every and not cfg.probe_n:
        raise ValueError(f"--probe-every {cfg.probe_every} needs the CO probe: set --probe-n N")
    if cfg.probe_every < 0:
        raise ValueError(f"invalid --probe-every {cfg.probe_every!r}: must be >= 0 "
                         "(0: once per epoch)")
    if cfg.probe_steps < 1:
        raise ValueError(f"invalid --probe-steps {cfg.probe_steps!r}: must be >= 1")
    if cfg.co_fgsm_ratio < 0:
        raise ValueError(f"invalid --co-fgsm-ratio {cfg.co_fgsm_ratio!r}: must be in [0, 1] "
                         "(0: the FGSM clause is off)")
    if cfg.co_gap < 0:
        raise ValueError(f"invalid --co-gap {cfg.co_gap!r}: must be in [0, 1] (0: the masked "
                         "clause is off)")
    if cfg.co_rel_drop < 0:
        raise ValueError(f"invalid --co-rel-drop {cfg.co_rel_drop!r}: must be in [0, 1] "
                         "(0: absolute drop only)")
    rule_from_config(cfg)
    if cfg.rollback_change not in ROLLBACK_CHANGES:
        raise ValueError(f"invalid --rollback-change {cfg.rollback_change!r}; valid: "
                         f"{', '.join(ROLLBACK_CHANGES)}")
    if not (0 < cfg.rollback_step_factor < 1):
        raise ValueError(f"invalid --rollback-step-factor {cfg.rollback_step_factor!r}: "
                         "must be in (0, 1)")
    if not cfg.rollback_reg_factor > 1:
        raise ValueError(f"invalid --rollback-reg-factor {cfg.rollback_reg_factor!r}: "
                         "must be > 1")
    if cfg.max_rollbacks < 0:
        raise ValueError(f"invalid --max-rollbacks {cfg.max_rollbacks!r}: must be >= 0")


def rule_from_config(cfg) -> CORule:
    return CORule(drop=cfg.co_drop, reference=cfg.co_reference,
                  fgsm_ratio=None if cfg.co_fgsm_ratio <= 0 else cfg.co_fgsm_ratio,
                  rel_drop=None if cfg.co_rel_drop <= 0 else cfg.co_rel_drop,
                  patience=cfg.co_patience, min_drop=cfg.co_min_drop,
                  gap=None if cfg.co_gap <= 0 else cfg.co_gap, floor=cfg.co_floor)


def build_monitor(cfg, dataset, train_x, train_y):
    """The monitor a TrainConfig asks for (None when ``probe_n`` is 0) and the training set
    that remains after a held-out probe batch is taken from it."""
    if not cfg.probe_n:
        return None, train_x, train_y
    if cfg.probe_source == "holdout":
        px, py, train_x, train_y, source = select_probe_data(
            "holdout", cfg.probe_n, dataset.train_x, dataset.train_y, dataset.test_x,
            dataset.test_y, cfg.n_train)
    else:
        px, py, _, _, source = select_probe_data(cfg.probe_source, cfg.probe_n, train_x,
                                                 train_y, dataset.test_x, dataset.test_y)
    rule = rule_from_config(cfg)
    mon = COMonitor(px, py, cfg.eps, pgd_steps=cfg.probe_steps, rule=rule, on_co=cfg.on_co,
                    every_steps=cfg.probe_every, seed=cfg.seed, source=source,
                    batch_size=cfg.eval_batch_size, rollback_change=cfg.rollback_change,
                    rollback_step_factor=cfg.rollback_step_factor,
                    rollback_reg_factor=cfg.rollback_reg_factor,
                    max_rollbacks=cfg.max_rollbacks)
    return mon, train_x, train_y
