"""The evaluation suite: clean, FGSM and PGD-k-r accuracy under a named protocol.

Every number comes out with the protocol, the attack's parameters, the number of points
and the seed that produced it, so a results table can never mix protocols silently.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from aaer.attacks.pgd import fgsm, pgd


@dataclass(frozen=True)
class Protocol:
    name: str
    pgd_steps: int = 50
    pgd_restarts: int = 10
    pgd_step255: float | None = None      # step in 1/255 units; None = eps/4
    n_eval: int | None = None             # first N test points; None = full test set
    attacks: tuple = ("clean", "fgsm", "pgd")
    selection: str = "worst"              # how restarts combine: see aaer.attacks.pgd
    description: str = ""

    def pgd_alpha(self, eps: float) -> float:
        return eps / 4 if self.pgd_step255 is None else self.pgd_step255 / 255.0

    def as_dict(self):
        d = asdict(self)
        d["attacks"] = list(self.attacks)
        return d


PROTOCOLS = {
    "lineage": Protocol("lineage", description="the AAER/fast-AT reference evaluation: clean, "
                        "FGSM, PGD-50-10 step eps/4, full test set"),
    "lineage-exact": Protocol("lineage-exact", selection="max-loss", description="as lineage, "
                              "with the reference's max-loss restart rule and no skipping of "
                              "broken points (slower; for digit-for-digit comparison)"),
    "wong": Protocol("wong", pgd_step255=2.0, description="PGD-50-10 with a fixed step 2/255, "
                     "full test set"),
    "gradalign-1k": Protocol("gradalign-1k", n_eval=1000, description="PGD-50-10 step eps/4 "
                             "on the first 1000 test points"),
    "quick": Protocol("quick", pgd_steps=10, pgd_restarts=1, n_eval=1000,
                      description="PGD-10-1 step eps/4 on the first 1000 points (a fast check, "
                      "not a publishable number)"),
}


def get_protocol(name: str, **overrides) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        p = replace(p, name=p.name if not overrides else f"{p.name}+custom", **overrides)
    return p


def _batches(x, y, batch_size, device):
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255)
        yield xb, y[i:i + batch_size].to(device, non_blocking=True)


def evaluate(model, x, y, eps: float, protocol: Protocol | str = "lineage", *,
             batch_size: int = 256, device=None, seed: int = 0, progress=None) -> dict:
    """Evaluate ``model`` (eval mode, [0,1] inputs) on test points x (uint8 or float).

    Returns {"protocol": {...}, "eps": eps, "n": n, "seed": seed, "results": {attack: {...}}}
    where each attack entry holds acc, loss, its parameters, n, seed and seconds.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if device is None:
        device = next(model.parameters()).device
    n = x.shape[0] if protocol.n_eval is None else min(protocol.n_eval, x.shape[0])
    x, y = x[:n], y[:n]
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    alpha = protocol.pgd_alpha(eps)
    params = {
        "clean": {},
        "fgsm": {"eps": eps, "step": eps, "start": "zero"},
        "pgd": {"eps": eps, "steps": protocol.pgd_steps, "restarts": protocol.pgd_restarts,
                "alpha": alpha, "start": "uniform", "selection": protocol.selection},
    }
    totals = {a: [0, 0.0, 0.0] for a in protocol.attacks}   # correct, loss sum, seconds
    for xb, yb in _batches(x, y, batch_size, device):
        for attack in protocol.attacks:
            t0 = time.perf_counter()
            if attack == "clean":
                xa = xb
            elif attack == "fgsm":
                xa = fgsm(model, xb, yb, eps)
            elif attack == "pgd":
                xa = pgd(model, xb, yb, eps, alpha, protocol.pgd_steps, protocol.pgd_restarts,
                         generator=gen, selection=protocol.selection)
            else:
                raise ValueError(f"unknown attack {attack!r}; valid: clean, fgsm, pgd")
            with torch.no_grad():
                z = model(xa).float()
                totals[attack][0] += int((z.argmax(1) == yb).sum())
                totals[attack][1] += float(F.cross_entropy(z, yb, reduction="sum"))
            totals[attack][2] += time.perf_counter() - t0
        if progress is not None:
            progress(xb.shape[0])
    model.train(was_training)
    results = {}
    for attack, (correct, loss_sum, secs) in totals.items():
        results[attack] = {"acc": correct / n, "loss": loss_sum / n, "n": n, "seed": seed,
                           "protocol": protocol.name, **params[attack],
                           "seconds": round(secs, 3)}
    return {"protocol": protocol.as_dict(), "eps": eps, "n": n, "seed": seed,
            "results": results}


def format_table(report: dict) -> str:
    """A small human-readable table of one evaluation report."""
    lines = [f"protocol {report['protocol']['name']}: eps {report['eps'] * 255:.4g}/255, "
             f"n {report['n']}, seed {report['seed']}",
             f"{'attack':<10} {'acc':>8} {'loss':>8}  parameters"]
    for attack, r in report["results"].items():
        extra = {k: v for k, v in r.items() if k not in ("acc", "loss", "n", "seed", "protocol",
                                                        "seconds", "eps")}
        par = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in extra.items())
        lines.append(f"{attack:<10} {r['acc']:>8.4f} {r['loss']:>8.4f}  {par}")
    return "\n".join(lines)
