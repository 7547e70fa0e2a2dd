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
  epoch reported is the first probe of the confirmed run of CO probes. The run's last
  probe has no successor to confirm it: with ``stop`` or ``rollback`` a candidate there is
  acted on at once (the event says ``confirmed_by: last probe``), so that neither hands
  back weights that met the rule; ``warn`` leaves it a candidate.
- The FGSM clause separates CO (still robust to the single-step attack, broken by PGD)
  from a run that simply diverges (every accuracy falls together).
A second clause catches runs that are in CO from their first probe, so have no robust
best to fall from (zero-start FGSM at a large eps): probe PGD accuracy at most ``floor``
(0.05) while FGSM accuracy is at least ``gap`` (0.25) above it -- robust to the
single-step attack, not to the multi-step one -- on ``patience`` consecutive probes.
``CORule(reference="previous", rel_drop=None, patience=1, fgsm_ratio=None, gap=None)`` is
Wong et al.'s rule exactly.

The monitor decides, the trainer acts. ``COMonitor.probe(model, epoch, step)`` measures
and returns a ``Decision``; the trainer (aaer.engine.trainer) applies it:
- ``continue`` (``new_best``: keep these weights as the best probe's) or ``warn``: CO is
  logged and its evidence recorded (metrics.jsonl, results.json);
- ``stop``: restore the weights of the best probe (as Wong et al.'s early stop does) and
  end training there; model.pt and the final evaluation use those weights;
- ``rollback``: restore the best probe's weights and optimiser state and strengthen the
  method by the named change -- each method declares what it changes (AAER: lamda1 x
  ``rollback_reg_factor``; an attack step: alpha x ``rollback_step_factor``) -- and
  continue; after ``max_rollbacks`` rollbacks the next CO stops the run.
Every decision is logged and recorded. The settings are checked by the schema
(aaer.config.schema.MonitorConfig), not here.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aaer.attacks.protocols import Protocol
from aaer.config.schema import SETTINGS
from aaer.errors import UsageError
from aaer.evaluation import evaluate
from aaer.runs import Outcome, Row

# what a run that stopped at CO kept when no probe before CO was good to go back to
KEPT_IN_CO = "its weights in CO (no probe before CO to go back to)"


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
    ``n`` >= 1 and ``source`` are checked by the schema; what is checked here is whether the
    data have room for the probe.
    """
    source = SETTINGS["monitor.probe_source"].check(source)
    if source == "test":
        if n > test_x.shape[0]:
            raise UsageError(f"invalid --probe-n {n!r}: it exceeds the {test_x.shape[0]} test "
                             f"points; valid: 0..{test_x.shape[0]}")
        kept_x = train_x[:n_train] if n_train is not None else train_x
        kept_y = train_y[:n_train] if n_train is not None else train_y
        return test_x[:n], test_y[:n], kept_x, kept_y, f"the first {n} test points"
    total = train_x.shape[0]
    used = total if n_train is None else min(n_train, total)
    if used + n <= total and n_train is not None:
        return (train_x[used:used + n], train_y[used:used + n], train_x[:used], train_y[:used],
                f"training images {used}..{used + n - 1} (not among the {used} trained on)")
    if n >= used:
        raise UsageError(f"--probe-n {n} with --probe-source holdout leaves no training "
                         f"images (only {used}); lower --probe-n")
    return (train_x[used - n:used], train_y[used - n:used], train_x[:used - n],
            train_y[:used - n], f"the last {n} of {used} training images, held out of training")


@dataclass
class Decision:
    """What the monitor decided about one probe (see the module docstring)."""

    action: str                        # continue | warn | stop | rollback
    record: dict[str, Any]             # the probe: epoch, step, clean, fgsm, pgd, seconds
    new_best: bool = False             # the best probe so far: keep its weights
    restore: bool = False              # stop / rollback: put the best probe's weights back
    change: str = "auto"               # rollback: what the method changes (Method.strengthen)
    factors: dict[str, float] = field(default_factory=dict)   # change -> factor
    messages: list[tuple[int, str]] = field(default_factory=list)   # (log level, text)


class COMonitor:
    """Probe + CO rule + decisions for one run (see the module docstring).

    The trainer asks ``due(step)`` after every optimiser step (True every ``every_steps``)
    and probes at the end of every epoch unless ``last_step()`` already is that step;
    ``epoch_fields()`` gives what goes into the epoch's metrics row.
    """

    def __init__(self, x, y, eps: float, *, pgd_steps: int = 10, pgd_alpha: float | None = None,
                 rule: CORule = CORule(), on_co: str = "warn", every_steps: int = 0,
                 seed: int = 0, source: str = "", batch_size: int | None = 256,
                 rollback_change: str = "auto", rollback_step_factor: float = 0.75,
                 rollback_reg_factor: float = 2.0, max_rollbacks: int = 2,
                 norm: str = "linf"):
        self.x, self.y, self.eps, self.norm = x, y, float(eps), norm
        self.pgd_steps = int(pgd_steps)
        self.pgd_step255 = None if pgd_alpha is None else float(pgd_alpha) * 255  # None: eps/4
        self.pgd_alpha = float(pgd_alpha) if pgd_alpha is not None else self.eps / 4
        self.rule, self.on_co, self.every_steps = rule, on_co, int(every_steps)
        self.seed, self.source, self.batch_size = seed, source, batch_size
        self.rollback_change = rollback_change
        self.factors = {"step": rollback_step_factor, "regularizer": rollback_reg_factor}
        self.max_rollbacks = max_rollbacks
        self.history: list[dict] = []        # every probe: epoch, step, clean, fgsm, pgd
        self.events: list[dict] = []         # every CO flag with its evidence and response
        self.rollbacks: list[dict] = []
        self.co_epoch: int | None = None     # the epoch of the first CO flag
        self.stopped: dict | None = None
        self._best: dict | None = None
        self._reported = 0                   # events already written into a metrics row
        self._streak: list[dict] = []        # the latest consecutive probes meeting the rule
        self._pending: dict | None = None    # the rollback event the trainer is applying

    # -- description ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"n": int(self.x.shape[0]), "source": self.source, "pgd_steps": self.pgd_steps,
                "pgd_restarts": 1, "pgd_alpha": self.pgd_alpha, "eps": self.eps,
                "norm": self.norm,
                "pgd_start": "uniform", "fgsm": "zero start, step eps", "seed": self.seed,
                "every_steps": self.every_steps, "rule": {**asdict(self.rule),
                                                          "text": self.rule.describe()},
                "on_co": self.on_co}

    # -- measuring -----------------------------------------------------------------
    def measure(self, model) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy on the probe batch (the model's mode is kept)."""
        p = Protocol("probe", pgd_steps=self.pgd_steps, pgd_restarts=1, norm=self.norm,
                     pgd_step255=self.pgd_step255, attacks=("clean", "fgsm", "pgd"))
        t0 = time.perf_counter()
        rep = evaluate(model, self.x, self.y, self.eps, p, batch_size=self.batch_size,
                       seed=self.seed)["results"]
        return {"clean": rep["clean"]["acc"], "fgsm": rep["fgsm"]["acc"],
                "pgd": rep["pgd"]["acc"], "seconds": round(time.perf_counter() - t0, 3)}

    def due(self, step: int) -> bool:
        """Probe after optimiser step ``step`` (counted from 1 over the run)?"""
        return bool(self.every_steps) and step % self.every_steps == 0

    def last_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    # -- deciding --------------------------------------------------------------------
    def probe(self, model, epoch: int, step: int, last: bool = False) -> Decision:
        """Probe ``model`` now, apply the rule and decide the response. ``last``: the run's
        final probe; with --on-co stop|rollback a candidate there is acted on at once, since
        no later probe can confirm it and the run would end with these weights."""
        rec = {"epoch": epoch, "step": step, **self.measure(model)}
        evidence = self.rule.check(self.history, rec, pending=len(self._streak))
        self.history.append(rec)
        decision = Decision("continue", rec)
        if evidence is None:
            self._streak = []
            if self._best is None or rec["pgd"] > self._best["pgd"]:
                self._best = dict(rec)
                decision.new_best = True
            return decision
        self._streak.append(rec)
        rec[Row.CO_CANDIDATE] = True
        early = last and self.on_co in ("stop", "rollback") and \
            len(self._streak) < self.rule.patience
        if early:
            decision.messages.append((logging.WARNING, (
                f"CO candidate at the last probe (epoch {epoch}): {evidence_text(evidence)}; "
                f"acted on without waiting for patience {self.rule.patience} (no later probe, "
                f"and --on-co {self.on_co} must not hand back these weights)")))
        elif len(self._streak) < self.rule.patience:
            decision.messages.append((logging.INFO, (
                f"CO candidate at epoch {epoch}: {evidence_text(evidence)}; CO if the next "
                f"probe agrees (patience {self.rule.patience})")))
            return decision
        rec["co"] = True
        onset = self._streak[0]
        if self.co_epoch is None:
            self.co_epoch = onset["epoch"]
        event = {"epoch": epoch, "step": step, "onset_epoch": onset["epoch"],
                 "onset_step": onset["step"], "evidence": evidence, "response": self.on_co}
        if early:
            event["confirmed_by"] = "last probe"
        self._decide(decision, event)
        self.events.append(event)
        if self.on_co != "warn":           # weights were restored: a new run must build up
            self._streak = []
        return decision

    def _decide(self, decision: Decision, event: dict) -> None:
        ev = event["evidence"]
        where = f"epoch {event['epoch']}" + (f" step {event['step']}" if self.every_steps else "")
        say = decision.messages.append
        say((logging.WARNING, f"CO detected at {where} (since epoch {event['onset_epoch']}): "
             f"{evidence_text(ev)}; clean acc {ev['clean_now']:.4f}"))
        response = self.on_co
        if response == "rollback" and len(self.rollbacks) >= self.max_rollbacks:
            say((logging.WARNING, f"CO again after {len(self.rollbacks)} rollbacks "
                 "(--max-rollbacks): stopping"))
            response = "stop"
            event["response"] = "stop (max rollbacks reached)"
        if response == "warn":
            decision.action = "warn"
            return
        restored = self._best_ref()
        if response == "rollback" and restored is None:
            # no probe before CO was good: go back to the start of training
            restored = {"epoch": -1, "step": 0, "pgd": None}
        event["restored_from"] = restored
        if response == "stop" or restored is None:
            if restored is None:
                event["response"] = f"stop (no probe before CO to {response} to)"
                say((logging.WARNING, f"--on-co {response}: no probe before CO had a PGD "
                     "accuracy to go back to; training ends with the current weights"))
            else:
                say((logging.WARNING, f"--on-co stop: weights of the best probe (epoch "
                     f"{restored['epoch']}, PGD acc {restored['pgd']:.4f}) restored; "
                     "training ends"))
            self.stopped = {"epoch": event["epoch"], "step": event["step"],
                            "restored_from": restored}
            decision.action, decision.restore = "stop", restored is not None
            return
        decision.action, decision.restore = "rollback", True
        decision.change, decision.factors = self.rollback_change, dict(self.factors)
        self._pending = event

    def rewound(self, before: dict[str, Any]) -> None:
        """The trainer restored an earlier state (and with it this monitor's probes of that
        time); the CO events and rollbacks of ``before`` (the state just before) stay."""
        self.events = list(before["events"])
        self.rollbacks = list(before["rollbacks"])
        self.co_epoch = before[Row.CO_EPOCH]
        self._reported = len(self.events)

    def rolled_back(self, change: dict[str, Any], epochs_discarded: float = 0.0,
                    rows_discarded: list | None = None) -> str:
        """The trainer rolled back (``change``: what the method changed; the epochs of
        training it threw away, and their metrics rows); returns the log line."""
        event, self._pending = self._pending, None
        restored = event["restored_from"]
        rb = {"epoch": event["epoch"], "step": event["step"], "restored_from": restored,
              **change, "epochs_discarded": epochs_discarded,
              "rows_discarded": list(rows_discarded or [])}
        self.rollbacks.append(rb)
        event["rollback"] = {k: v for k, v in rb.items() if k != "rows_discarded"}
        where = "the start of training" if restored["epoch"] < 0 else \
            f"the best probe (epoch {restored['epoch']}, PGD acc {restored['pgd']:.4f})"
        return (f"--on-co rollback {len(self.rollbacks)}/{self.max_rollbacks}: training goes "
                f"back to {where}, {epochs_discarded:g} epoch(s) discarded; "
                f"{change['param']} {change['old']:g} -> {change['new']:g}")

    def diverged(self, epoch: int) -> str:
        """Training diverged after a rollback strengthened the method: the trainer stops
        with the best probe's weights (the strengthening, not the user's settings, may be
        the cause). Returns the log line."""
        best = self._best_ref()
        self.stopped = {"epoch": epoch, "step": None, "reason": "diverged",
                        "restored_from": best}
        changes = ", ".join(f"{k} {v:g}" for k, v in self.method_changes().items())
        return (f"--on-co rollback: training diverged after {len(self.rollbacks)} rollback(s) "
                f"({changes}); stopping with the weights of the best probe (epoch "
                f"{best['epoch']}, PGD acc {best['pgd']:.4f})")

    def _best_ref(self) -> dict | None:
        """Where the best probe is (epoch, step, PGD accuracy), or None without one."""
        best = self._best
        return None if best is None else \
            {"epoch": best["epoch"], "step": best["step"], "pgd": best["pgd"]}

    def epochs_discarded(self) -> float:
        """Epochs trained and thrown away by rollbacks (the price of the rescue)."""
        return sum(rb.get("epochs_discarded", 0.0) for rb in self.rollbacks)

    def outcome(self) -> tuple[Outcome, str]:
        """What became of the run, as a kind (aaer.runs.Outcome) and its sentence."""
        n = len(self.rollbacks)
        if self.co_epoch is None:
            return Outcome.NO_CO, "no CO"
        if self.on_co == "warn":
            return Outcome.WARNED, "CO, warned (--on-co warn)"
        if self.stopped is not None:
            kept = "the weights of the best probe" if self.stopped["restored_from"] else \
                KEPT_IN_CO
            if self.stopped.get("reason") == "diverged":
                return Outcome.NOT_RESCUED, (f"not rescued: training diverged after {n} "
                                             f"rollback(s); stopped with {kept}")
            if self.on_co == "rollback":
                return Outcome.NOT_RESCUED, (f"not rescued: CO again after {n} rollback(s); "
                                             f"stopped with {kept}")
            return Outcome.STOPPED, f"stopped at CO with {kept} (--on-co stop)"
        if self._streak:
            return Outcome.STILL_IN_CO, f"still in CO at the end after {n} rollback(s)"
        final = self.history[-1]["pgd"] if self.history else None
        if final is not None and final <= self.rule.floor:
            # out of CO by the rule, yet robust to neither attack: no rescue to claim
            return Outcome.NOT_RESCUED, (
                f"not rescued: no CO at the end after {n} rollback(s), but probe PGD accuracy "
                f"{final:.3f} is at most --co-floor {self.rule.floor:g} (not robust)")
        return Outcome.RESCUED, f"rescued after {n} rollback(s)"

    def ends_in_co(self) -> bool:
        """Do the weights the run ends with meet the CO rule? Its last probes do (warn, or
        rollback's last attempt), or it stopped at CO with no earlier probe to restore."""
        if self.stopped is not None:
            return self.stopped["restored_from"] is None
        return bool(self._streak)

    # -- records ---------------------------------------------------------------------
    def epoch_fields(self) -> dict[str, Any]:
        """The latest probe, CO flag and responses, for the epoch's metrics row."""
        rec = self.history[-1]
        row = {**Row.probe_fields(rec), Row.PROBE_SECONDS: rec["seconds"],
               Row.CO_FLAG: len(self.events) > self._reported, Row.CO_EPOCH: self.co_epoch,
               Row.CO_CANDIDATE: bool(rec.get(Row.CO_CANDIDATE))}
        new = self.events[self._reported:]
        self._reported = len(self.events)
        if new:
            row[Row.CO_EVENTS] = new
        if self.method_changes():
            row[Row.METHOD_CHANGES] = self.method_changes()
        if self.stopped is not None:
            row[Row.CO_STOP] = True
        return row

    def method_changes(self) -> dict[str, float]:
        """The method settings rollbacks have changed so far: attribute -> current value."""
        return {rb["param"]: rb["new"] for rb in self.rollbacks}

    def summary(self) -> dict[str, Any]:
        best = self._best
        kind, outcome = self.outcome()
        return {"probe": self.describe(), "co_detected": self.co_epoch is not None,
                Row.CO_EPOCH: self.co_epoch, "events": self.events, "rollbacks": self.rollbacks,
                "stopped": self.stopped, "outcome": outcome, "outcome_kind": kind.value,
                "rescued": kind is Outcome.RESCUED,
                "ends_in_co": self.ends_in_co(),
                "epochs_discarded": round(self.epochs_discarded(), 6),
                "best_probe": None if best is None else {
                    k: best[k] for k in ("epoch", "step", "clean", "fgsm", "pgd")},
                "final_probe": None if not self.history else {
                    k: self.history[-1][k] for k in ("epoch", "step", "clean", "fgsm", "pgd")}}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (the best probe's weights are in best_probe.pt)."""
        return {"history": self.history, "events": self.events, "rollbacks": self.rollbacks,
                Row.CO_EPOCH: self.co_epoch, "stopped": self.stopped, "best": self._best,
                "streak": self._streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.events = list(state.get("events", []))
        self.rollbacks = list(state.get("rollbacks", []))
        self.co_epoch = state.get(Row.CO_EPOCH)
        self.stopped = state.get("stopped")
        self._reported = len(self.events)
        self._best = state.get("best")
        self._streak = list(state.get("streak", []))


def rule_from_config(m) -> CORule:
    """The CO rule of a run's monitor settings (0 turns a clause off)."""
    return CORule(drop=m.co_drop, reference=m.co_reference,
                  fgsm_ratio=None if m.co_fgsm_ratio <= 0 else m.co_fgsm_ratio,
                  rel_drop=None if m.co_rel_drop <= 0 else m.co_rel_drop,
                  patience=m.co_patience, min_drop=m.co_min_drop,
                  gap=None if m.co_gap <= 0 else m.co_gap, floor=m.co_floor)


def build_monitor(cfg, dataset, train_x, train_y, pool=None):
    """The monitor a resolved run asks for (None when probe_n is 0) and the training set
    that remains after a held-out probe batch is taken from it. ``pool``: (x, y), the
    training images a holdout probe may take from (default: the data set's)."""
    m = cfg.monitor
    if not m.probe_n:
        return None, train_x, train_y
    pool_x, pool_y = pool if pool is not None else (dataset.train_x, dataset.train_y)
    if m.probe_source == "holdout":
        px, py, train_x, train_y, source = select_probe_data(
            "holdout", m.probe_n, pool_x, pool_y, dataset.test_x, dataset.test_y,
            cfg.data.n_train)
    else:
        px, py, _, _, source = select_probe_data(m.probe_source, m.probe_n, train_x,
                                                 train_y, dataset.test_x, dataset.test_y)
    if hasattr(px, "materialize"):               # held-out streamed images: decode them
        px = px.materialize()
    mon = COMonitor(px, py, cfg.eps, pgd_steps=m.probe_steps, rule=rule_from_config(m),
                    on_co=m.on_co, every_steps=m.probe_every, seed=cfg.optim.seed,
                    source=source, batch_size=cfg.evaluation.batch_size,
                    rollback_change=m.rollback_change,
                    rollback_step_factor=m.rollback_step_factor,
                    rollback_reg_factor=m.rollback_reg_factor, max_rollbacks=m.max_rollbacks,
                    norm=cfg.method.norm)
    return mon, train_x, train_y
