"""The evaluation suite: clean, FGSM, PGD-k-r and AutoAttack accuracy under a named protocol.

Every number comes out with the protocol, the attack's parameters, the number of points
and the seed that produced it, so a results table can never mix protocols silently.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from aaer.attacks.pgd import fgsm, pgd
from aaer.attacks.protocols import ATTACKS, PROTOCOLS, Protocol, get_protocol
from aaer.config.schema import SETTINGS

AA_BACKENDS = ("native", "official")

__all__ = ["ATTACKS", "PROTOCOLS", "Protocol", "get_protocol", "evaluate", "format_table",
           "default_batch_size", "AA_BACKENDS"]


def default_batch_size(device) -> int:
    """256 on CPU, 1024 on an accelerator: a batch that keeps either busy."""
    return 256 if torch.device(device).type == "cpu" else 1024


class Autocast(torch.nn.Module):
    """Runs ``model``'s forward under torch.autocast; the logits come back as float32."""

    def __init__(self, model, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device_type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def official_autoattack():
    """The official package's AutoAttack class, or a one-line error saying how to get it."""
    try:
        from autoattack import AutoAttack as Official
    except ImportError:
        raise ValueError("--aa-backend official needs the `autoattack` package, which is not "
                         "installed (pip install git+https://github.com/fra31/auto-attack); "
                         "the default --aa-backend native needs nothing") from None
    return Official


def _autoattack(model, x, y, eps, protocol, seed, batch_size, device, backend, state_path,
                tune):
    """AutoAttack on all of (x, y) at once (it batches internally)."""
    version = protocol.aa_version
    attacks = list(protocol.aa_attacks) if protocol.aa_attacks else None
    if backend == "native":
        from aaer.attacks.autoattack import AutoAttack
        aa = AutoAttack(model, "Linf", eps, version=version,
                        attacks_to_run=attacks if version == "custom" else None, seed=seed,
                        batch_size=batch_size, state_path=state_path, device=device)
        if tune is not None:
            tune(aa)
        r = aa.run(x, y)
        return {"acc": r["robust_acc"], "clean_acc": r["clean_acc"],
                "per_attack": r["per_attack"], "attacks": r["attacks"],
                "seconds_per_attack": {k: round(v, 3) for k, v in r["seconds"].items()}}
    Official = official_autoattack()
    aa = Official(model, norm="Linf", eps=eps, version=version, seed=seed, device=str(device))
    if version == "custom":
        aa.attacks_to_run = attacks
    if tune is not None:
        tune(aa)
    x_adv = aa.run_standard_evaluation(x.to(device), y.to(device), bs=batch_size)
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                           for i in range(0, len(x), batch_size)]) == y.cpu()
        robust = torch.cat([model(x_adv[i:i + batch_size]).argmax(1).cpu()
                            for i in range(0, len(x), batch_size)]) == y.cpu()
    robust &= clean
    return {"acc": float(robust.float().mean()), "clean_acc": float(clean.float().mean()),
            "per_attack": None, "attacks": list(getattr(aa, "attacks_to_run", []) or [])}


def _batches(x, y, batch_size, device):
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255)
        yield xb, y[i:i + batch_size].to(device, non_blocking=True)


def evaluate(model, x, y, eps: float, protocol: Protocol | str = "lineage", *,
             batch_size: int | None = None, device=None, seed: int = 0, progress=None,
             precision: str = "fp32", aa_backend: str = "native",
             aa_state_path: str | None = None, _aa_tune=None) -> dict:
    """Evaluate ``model`` (eval mode, [0,1] inputs) on test points x (uint8 or float).

    Returns {"protocol": {...}, "eps": eps, "n": n, "seed": seed, "results": {attack: {...}}}
    where each attack entry holds acc, its parameters, n, seed, protocol and seconds.
    clean/FGSM/PGD run batch by batch; AutoAttack runs once over all n points, resuming
    from ``aa_state_path`` (native backend) if a killed run left it there; the state file
    is deleted once AutoAttack completes. ``batch_size`` None: 256 on CPU, 1024 on CUDA.
    ``precision`` bf16/fp16 runs the forward passes under autocast (float32 logits).
    ``_aa_tune(aa)`` (tests) may adjust the AutoAttack object before it runs.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    bad = [a for a in protocol.attacks if a not in ATTACKS]
    if bad:
        raise ValueError(f"unknown attack(s) {bad}; valid: {', '.join(ATTACKS)}")
    precision = SETTINGS["evaluation.precision"].check(precision)
    if aa_backend not in AA_BACKENDS:
        raise ValueError(f"aa_backend {aa_backend!r} is not valid; valid: "
                         f"{', '.join(AA_BACKENDS)}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    if "autoattack" in protocol.attacks and aa_backend == "official":
        official_autoattack()                  # fail before any work is done
    n = x.shape[0] if protocol.n_eval is None else min(protocol.n_eval, x.shape[0])
    x, y = x[:n], y[:n]
    was_training = model.training
    model.eval()
    net = model
    if precision != "fp32":
        net = Autocast(model, {"bf16": torch.bfloat16, "fp16": torch.float16}[precision],
                       device.type).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    alpha = protocol.pgd_alpha(eps)
    params = {
        "clean": {},
        "fgsm": {"eps": eps, "step": eps, "start": "zero"},
        "pgd": {"eps": eps, "steps": protocol.pgd_steps, "restarts": protocol.pgd_restarts,
                "alpha": alpha, "start": "uniform", "selection": protocol.selection},
    }
    batched = [a for a in protocol.attacks if a != "autoattack"]
    totals = {a: [0, 0.0, 0.0] for a in batched}   # correct, loss sum, seconds
    try:
        for xb, yb in _batches(x, y, batch_size, device):
            for attack in batched:
                t0 = time.perf_counter()
                if attack == "clean":
                    xa = xb
                elif attack == "fgsm":
                    xa = fgsm(net, xb, yb, eps)
                else:
                    xa = pgd(net, xb, yb, eps, alpha, protocol.pgd_steps,
                             protocol.pgd_restarts, generator=gen,
                             selection=protocol.selection)
                with torch.no_grad():
                    z = net(xa).float()
                    totals[attack][0] += int((z.argmax(1) == yb).sum())
                    totals[attack][1] += float(F.cross_entropy(z, yb, reduction="sum"))
                totals[attack][2] += time.perf_counter() - t0
            if progress is not None and batched:
                progress(xb.shape[0])
        results = {}
        for attack in protocol.attacks:
            if attack == "autoattack":
                t0 = time.perf_counter()
                xf = x.float().div(255) if x.dtype == torch.uint8 else x
                state = aa_state_path if aa_backend == "native" else None
                r = _autoattack(net, xf, y, eps, protocol, seed, batch_size, device,
                                aa_backend, state, _aa_tune)
                if state is not None and os.path.exists(state):
                    os.unlink(state)            # done: the numbers are in the report
                results[attack] = {"acc": r.pop("acc"), **r, "version": protocol.aa_version,
                                   "norm": "Linf", "eps": eps, "n": n, "seed": seed,
                                   "protocol": protocol.name,
                                   "seconds": round(time.perf_counter() - t0, 3),
                                   "backend": aa_backend}
                continue
            correct, loss_sum, secs = totals[attack]
            results[attack] = {"acc": correct / n, "loss": loss_sum / n, "n": n, "seed": seed,
                               "protocol": protocol.name, **params[attack],
                               "seconds": round(secs, 3)}
    finally:
        model.train(was_training)
    for r in results.values():
        if precision != "fp32":
            r["precision"] = precision
    report = {"protocol": protocol.as_dict(), "eps": eps, "n": n, "seed": seed,
              "batch_size": batch_size, "results": results}
    if precision != "fp32":
        report["precision"] = precision
    return report


def format_table(report: dict) -> str:
    """A small human-readable table of one evaluation report."""
    lines = [f"protocol {report['protocol']['name']}: eps {report['eps'] * 255:.4g}/255, "
             f"n {report['n']}, seed {report['seed']}"
             + (f", precision {report['precision']}" if "precision" in report else ""),
             f"{'attack':<10} {'acc':>8} {'loss':>8}  parameters"]
    skip = ("acc", "loss", "n", "seed", "protocol", "seconds", "eps", "precision", "clean_acc",
            "per_attack", "seconds_per_attack", "attacks")
    for attack, r in report["results"].items():
        extra = {k: v for k, v in r.items() if k not in skip}
        par = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in extra.items())
        loss = f"{r['loss']:>8.4f}" if "loss" in r else f"{'-':>8}"
        lines.append(f"{attack:<10} {r['acc']:>8.4f} {loss}  {par}")
        if attack == "autoattack" and r.get("per_attack"):
            for name, acc in r["per_attack"].items():
                lines.append(f"  {'after ' + name:<16} {acc:>8.4f}")
    return "\n".join(lines)
