"""Validation and model selection (--val-n N, --select last|best-val-pgd): the FastAT
Benchmark's protocol (fzjcdt/FastAT_Benchmark, fast_at/at_base.py and each method's loop).

The last N images of the training set are held out (never trained on: aaer.training builds the
training set without them) as a validation set. After every epoch the model is validated
in eval mode: clean accuracy, FGSM (zero start, step eps) and PGD-10 with step 2/255 from
one uniform random start (the benchmark's torchattacks PGD(eps, alpha=2/255, steps=10)),
for the last weights and, with --weight-average, for the averaged model. The epoch's
candidate is the last weights when their PGD accuracy is at least the averaged model's,
else the averaged model; it becomes the selected model when its PGD accuracy is higher
than the best so far, or equal with a higher clean accuracy. The selected weights are part
of the training state (checkpoints and rollbacks keep them); the final evaluation
evaluates both the model of --eval-model and the selected one.

The validator measures and decides; the trainer keeps the weights it names.
"""
from __future__ import annotations

import time
from typing import Any


from aaer.attacks.protocols import Protocol
from aaer.config.schema import SELECTIONS
from aaer.evaluation import evaluate
from aaer.runs import Row

# the benchmark's validation attack: PGD-10, step 2/255, one random start (and FGSM)
VALIDATION = Protocol("validation", pgd_steps=10, pgd_restarts=1, pgd_step255=2.0,
                      attacks=("clean", "fgsm", "pgd"),
                      description="the FastAT Benchmark's per-epoch validation: clean, FGSM, "
                                  "PGD-10 step 2/255 from one random start")
__all__ = ["Validator", "VALIDATION", "SELECTIONS", "build_validator", "split_validation"]


class Validator:
    """Per-epoch validation of one run on held-out images, and the model it selects."""

    def __init__(self, x, y, eps: float, *, seed: int = 0, batch_size: int | None = None,
                 select: str = "best-val-pgd", norm: str = "linf"):
        self.x, self.y, self.eps, self.norm = x, y, float(eps), norm
        self.seed, self.batch_size, self.select = seed, batch_size, select
        self.protocol = VALIDATION if norm == "linf" else \
            Protocol("validation", pgd_steps=10, pgd_restarts=1, norm=norm,
                     attacks=("clean", "fgsm", "pgd"))
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None      # epoch, model, clean, fgsm, pgd, weights

    def measure(self, model) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy on the validation images (the model's mode kept)."""
        rep = evaluate(model, self.x, self.y, self.eps, self.protocol,
                       batch_size=self.batch_size, seed=self.seed)["results"]
        return {"clean": rep["clean"]["acc"], "fgsm": rep["fgsm"]["acc"],
                "pgd": rep["pgd"]["acc"]}

    def validate(self, epoch: int, model, averaged=None) -> tuple[dict[str, Any], str | None]:
        """Validate the epoch's last weights (and averaged model). Returns the row fields and
        which model became the selected one ("last", "averaged"), or None."""
        t0 = time.perf_counter()
        last = self.measure(model)
        avg = self.measure(averaged) if averaged is not None else None
        name, cand = ("last", last) if avg is None or last["pgd"] >= avg["pgd"] else \
            ("averaged", avg)
        better = self.best is None or cand["pgd"] > self.best["pgd"] or \
            (cand["pgd"] == self.best["pgd"] and cand["clean"] > self.best["clean"])
        record = {"epoch": epoch, "last": last, "averaged": avg,
                  "seconds": round(time.perf_counter() - t0, 3)}
        self.history.append(record)
        fields = {Row.VAL_CLEAN: last["clean"], Row.VAL_FGSM: last["fgsm"],
                  Row.VAL_PGD: last["pgd"], Row.VAL_SECONDS: record["seconds"],
                  Row.VAL_SELECTED: better}
        if avg is not None:
            fields.update({Row.VAL_AVG_CLEAN: avg["clean"], Row.VAL_AVG_FGSM: avg["fgsm"],
                           Row.VAL_AVG_PGD: avg["pgd"]})
        return fields, (name if better else None)

    def keep(self, epoch: int, name: str, net) -> None:
        """The epoch's candidate ``name`` is the selected model: keep its weights."""
        rec = self.history[-1][name]
        self.best = {"epoch": epoch, "model": name, **rec,
                     "weights": {k: v.detach().to("cpu", copy=True)
                                 for k, v in net.state_dict().items()}}

    def summary(self) -> dict[str, Any]:
        return {"n": int(self.x.shape[0]), "protocol": self.protocol.as_dict(),
                "select": self.select, "selected": None if self.best is None else
                {k: v for k, v in self.best.items() if k != "weights"}}

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.best = state["best"]


def split_validation(train_x, train_y, n: int):
    """(train_x, train_y, val_x, val_y): the last ``n`` training images held out, as the
    FastAT Benchmark holds out CIFAR's indices 49000-49999."""
    total = int(train_x.shape[0])
    if n >= total:
        from aaer.errors import UsageError
        raise UsageError(f"--val-n {n} leaves no training images (the training set has "
                         f"{total}); valid: 1..{total - 1}")
    vx, vy = train_x[total - n:], train_y[total - n:]
    if hasattr(vx, "materialize"):               # held-out streamed images: decode them
        vx = vx.materialize()
    return train_x[:total - n], train_y[:total - n], vx, vy


def build_validator(cfg, dataset) -> tuple[Validator | None, Any, Any]:
    """The validator a resolved run asks for and the training images that remain
    (``dataset``'s, before --n-train takes its first N)."""
    n = cfg.data.val_n
    if not n:
        return None, dataset.train_x, dataset.train_y
    tx, ty, vx, vy = split_validation(dataset.train_x, dataset.train_y, n)
    return (Validator(vx, vy, cfg.eps, seed=cfg.optim.seed,
                      batch_size=cfg.evaluation.batch_size, select=cfg.evaluation.select,
                      norm=cfg.method.norm), tx, ty)
