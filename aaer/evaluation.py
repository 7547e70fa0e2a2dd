"""The evaluation suite: clean, FGSM, PGD-k-r, CR and AutoAttack accuracy under a named
protocol.

Every number comes out with the protocol, the attack's parameters, the number of points
and the seed that produced it, so a results table can never mix protocols silently.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from aaer.attacks.cr import CRAttack
from aaer.attacks.pgd import fgsm, pgd, skip_draws
from aaer.attacks.protocols import ATTACKS, PROTOCOLS, Protocol, get_protocol
from aaer.config.schema import SETTINGS
from aaer.errors import UsageError
from aaer.threat import AA_NORMS

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
        raise UsageError("--aa-backend official needs the `autoattack` package, which is not "
                         "installed (pip install git+https://github.com/fra31/auto-attack); "
                         "the default --aa-backend native needs nothing") from None
    return Official


def _autoattack(model, x, y, eps, protocol, seed, batch_size, device, backend, state_path,
                tune, shard):
    """AutoAttack on all of (x, y) at once (it batches internally)."""
    version = protocol.aa_version
    attacks = list(protocol.aa_attacks) if protocol.aa_attacks else None
    norm = AA_NORMS[protocol.norm]
    if backend == "native":
        from aaer.attacks.autoattack import AutoAttack
        aa = AutoAttack(model, norm, eps, version=version,
                        attacks_to_run=attacks if version == "custom" else None, seed=seed,
                        batch_size=batch_size, state_path=state_path, device=device,
                        shard=shard if shard.world_size > 1 else None)
        if tune is not None:
            tune(aa)
        r = aa.run(x, y)
        return {"acc": r["robust_acc"], "clean_acc": r["clean_acc"],
                "per_attack": r["per_attack"], "attacks": r["attacks"],
                "seconds_per_attack": {k: round(v, 3) for k, v in r["seconds"].items()}}, \
            aa.robust_mask
    Official = official_autoattack()
    aa = Official(model, norm=norm, eps=eps, version=version, seed=seed, device=str(device))
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
            "per_attack": None, "attacks": list(getattr(aa, "attacks_to_run", []) or [])}, \
        robust


def _batch(x, y, start, batch_size, device):
    xb = x[start:start + batch_size].to(device, non_blocking=True)
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255)
    return xb, y[start:start + batch_size].to(device, non_blocking=True)


def _bits(mask) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


class _Alone:
    """The whole evaluation in this process (see aaer.engine.distributed.Shard)."""

    rank, world_size = 0, 1

    @staticmethod
    def gather(obj):
        return [obj]

    @staticmethod
    def owns(k):
        return True


def evaluate(model, x, y, eps: float, protocol: Protocol | str = "lineage", *,
             batch_size: int | None = None, device=None, seed: int = 0, progress=None,
             precision: str = "fp32", aa_backend: str = "native",
             aa_state_path: str | None = None, shard=None, _aa_tune=None) -> dict:
    """Evaluate ``model`` (eval mode, [0,1] inputs) on test points x (uint8 or float).

    ``eps`` is the radius in pixel units, in the protocol's norm (``protocol.norm``).
    Returns {"protocol": {...}, "eps": eps, "norm": ..., "n": n, "seed": seed, "results":
    {attack: {...}}, "verdicts": {attack: "0110..."}} where each attack entry holds acc, its
    parameters, n, seed, protocol, norm and seconds, and each verdict string has a 1 for
    every point the attack did not break. clean/FGSM/PGD/CR run batch by batch (CR's noise
    is seeded from (seed, batch number), see aaer.attacks.cr); AutoAttack
    runs once over all n points, resuming from ``aa_state_path`` (native backend) if a
    killed run left it there; the state file is deleted once AutoAttack completes.
    ``batch_size`` None: 256 on CPU, 1024 on CUDA. ``precision`` bf16/fp16 runs the forward
    passes under autocast (float32 logits). ``_aa_tune(aa)`` (tests) may adjust the
    AutoAttack object before it runs.

    ``shard`` (aaer.engine.distributed.Shard): several processes evaluate one model, each
    its own batches (batch k on process k % world_size; the random starts of the others'
    batches are skipped exactly, so each point sees the noise it sees in one process), and
    the per-batch results are gathered and added in batch order: every process returns
    the report one process would have written.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    bad = [a for a in protocol.attacks if a not in ATTACKS]
    if bad:
        raise UsageError(f"unknown attack(s) {bad}; valid: {', '.join(ATTACKS)}")
    precision = SETTINGS["evaluation.precision"].check(precision)
    if aa_backend not in AA_BACKENDS:
        raise UsageError(f"aa_backend {aa_backend!r} is not valid; valid: "
                         f"{', '.join(AA_BACKENDS)}")
    shard = shard or _Alone()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    if "autoattack" in protocol.attacks and aa_backend == "official":
        if shard.world_size > 1:
            raise UsageError("--aa-backend official runs in one process; under torchrun use "
                             "the native backend, which shards AutoAttack over the processes")
        official_autoattack()                  # fail before any work is done
    n = x.shape[0] if protocol.n_eval is None else min(protocol.n_eval, x.shape[0])
    x, y = x[:n], y[:n]
    norm = protocol.norm
    was_training = model.training
    model.eval()
    net = model
    if precision != "fp32":
        net = Autocast(model, {"bf16": torch.bfloat16, "fp16": torch.float16}[precision],
                       device.type).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    alpha = protocol.pgd_alpha(eps)
    cr = None
    if "cr" in protocol.attacks:           # refuses L2 before any work is done
        cr = CRAttack(net, AA_NORMS[norm], eps, n_iter=protocol.cr_iters,
                      decay_steps=protocol.cr_decay_steps, n_restarts=protocol.cr_restarts,
                      n_target_classes=protocol.cr_targets, seed=seed)
    params = {
        "clean": {},
        "fgsm": {"eps": eps, "step": eps, "start": "zero"},
        "pgd": {"eps": eps, "steps": protocol.pgd_steps, "restarts": protocol.pgd_restarts,
                "alpha": alpha, "start": "uniform", "selection": protocol.selection},
    }
    if cr is not None:
        with torch.no_grad():
            n_classes = net(_batch(x, y, 0, 1, device)[0]).shape[1]
        params["cr"] = {"eps": eps, "iterations": cr.n_iter, "decay_steps": cr.decay_steps,
                        "restarts": cr.n_restarts, "alpha": cr.alpha,
                        "targets": cr.targets_for(n_classes), "relaxation": cr.scales()}
    batched = [a for a in protocol.attacks if a != "autoattack"]
    mine: dict[int, dict] = {}   # batch -> attack -> (correct mask, loss sum, seconds, counts)
    try:
        for k, start in enumerate(range(0, n, batch_size)):
            shape = (min(batch_size, n - start), *x.shape[1:])
            if not shard.owns(k):
                if "pgd" in batched:
                    skip_draws(shape, protocol.pgd_restarts, norm, gen)
                continue
            xb, yb = _batch(x, y, start, batch_size, device)
            mine[k] = {}
            for attack in batched:
                t0 = time.perf_counter()
                counts = {}
                if attack == "clean":
                    xa = xb
                elif attack == "fgsm":
                    xa = fgsm(net, xb, yb, eps, norm)
                elif attack == "cr":
                    xa = cr.perturb(xb, yb, batch_index=k)
                    counts = {"forwards": int(cr.forwards.sum()),
                              "backwards": int(cr.backwards.sum())}
                else:
                    xa = pgd(net, xb, yb, eps, alpha, protocol.pgd_steps,
                             protocol.pgd_restarts, generator=gen,
                             selection=protocol.selection, norm=norm)
                with torch.no_grad():
                    z = net(xa).float()
                    ok = (z.argmax(1) == yb).cpu()
                    loss = float(F.cross_entropy(z, yb, reduction="sum"))
                mine[k][attack] = (ok, loss, time.perf_counter() - t0, counts)
            if progress is not None and batched:
                progress(xb.shape[0])
        per_batch = {}
        for part in shard.gather(mine):
            per_batch.update(part)
        results, verdicts = {}, {}
        for attack in batched:
            rows = [per_batch[k][attack] for k in sorted(per_batch)]
            mask = torch.cat([r[0] for r in rows])
            loss_sum = 0.0
            for r in rows:                     # in batch order: the one-process float sum
                loss_sum += r[1]
            secs = sum(r[2] for r in rows)
            verdicts[attack] = _bits(mask)
            results[attack] = {"acc": int(mask.sum()) / n, "loss": loss_sum / n, "n": n,
                               "seed": seed, "protocol": protocol.name, "norm": norm,
                               **params[attack], "seconds": round(secs, 3)}
            for c in rows[0][3] if rows else ():   # passes per point (CR)
                results[attack][f"{c}_per_point"] = round(sum(r[3][c] for r in rows) / n, 2)
        if "autoattack" in protocol.attacks:
            t0 = time.perf_counter()
            xf = x.float().div(255) if x.dtype == torch.uint8 else x
            state = aa_state_path if aa_backend == "native" else None
            r, robust = _autoattack(net, xf, y, eps, protocol, seed, batch_size, device,
                                    aa_backend, state, _aa_tune, shard)
            if state is not None:
                from aaer.attacks.autoattack import shard_state_path
                done = shard_state_path(state, shard if shard.world_size > 1 else None)
                if os.path.exists(done):
                    os.unlink(done)         # done: the numbers are in the report
            verdicts["autoattack"] = _bits(robust.cpu())
            results["autoattack"] = {"acc": r.pop("acc"), **r, "version": protocol.aa_version,
                                     "norm": AA_NORMS[norm], "eps": eps, "n": n,
                                     "seed": seed, "protocol": protocol.name,
                                     "seconds": round(time.perf_counter() - t0, 3),
                                     "backend": aa_backend}
        results = {a: results[a] for a in protocol.attacks}
    finally:
        model.train(was_training)
    for r in results.values():
        if precision != "fp32":
            r["precision"] = precision
    report = {"protocol": protocol.as_dict(), "eps": eps, "norm": norm, "n": n, "seed": seed,
              "batch_size": batch_size, "results": results, "verdicts": verdicts}
    if shard.world_size > 1:
        report["processes"] = shard.world_size
    if precision != "fp32":
        report["precision"] = precision
    return report


def eps_text(eps: float, norm: str = "linf") -> str:
    """'8/255' (L-inf) or '0.5 (L2)'."""
    return f"{eps * 255:.4g}/255" if norm == "linf" else f"{eps:.4g} (L2)"


def eval_protocol_text(evaluation: dict) -> str:
    """One evaluation report's protocol in words, e.g. 'lineage, PGD-50-10 step 2/255 (worst
    restart rule), FGSM zero start, eps 8/255, n=10000, seed 0' (report.md, report.html)."""
    proto = evaluation.get("protocol", {})
    pgd = evaluation.get("results", {}).get("pgd")
    norm = evaluation.get("norm", "linf")
    parts = [proto.get("name", "?") + (" (L2)" if norm == "l2" else "")]
    if pgd is not None:
        parts.append(f"PGD-{pgd['steps']}-{pgd['restarts']} step "
                     f"{eps_text(pgd['alpha'], norm).replace(' (L2)', '')}"
                     f" ({pgd.get('selection', 'worst')} restart rule)")
    parts.append(f"FGSM zero start, eps {eps_text(evaluation.get('eps', 0), norm)}")
    parts.append(f"n={evaluation.get('n')}, seed {evaluation.get('seed')}")
    return ", ".join(parts)


def format_table(report: dict) -> str:
    """A small human-readable table of one evaluation report."""
    lines = [f"protocol {report['protocol']['name']}: eps "
             f"{eps_text(report['eps'], report.get('norm', 'linf'))}, "
             f"n {report['n']}, seed {report['seed']}"
             + (f", precision {report['precision']}" if "precision" in report else ""),
             f"{'attack':<10} {'acc':>8} {'loss':>8}  parameters"]
    skip = ("acc", "loss", "n", "seed", "protocol", "seconds", "eps", "precision", "clean_acc",
            "per_attack", "seconds_per_attack", "attacks", "norm")
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
