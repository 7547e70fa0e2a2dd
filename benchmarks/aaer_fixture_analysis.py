"""Why N-AAER fails the CO fixture where RS-AAER does not: the evidence from the runs.

    aaer reproduce co-fixture --seeds 10 --out runs/co-warn
    python benchmarks/aaer_fixture_analysis.py runs/co-warn [--grid runs/co-grid]

From each run's metrics.jsonl, per method and epoch (mean over the seeds found):
the AAE count, the logit variation of the AAEs (AV) and of the normal AEs (NV) that
AAER's hinge max(AV - NV, 0) compares, the share of training examples whose batch had
AV > NV (``aaer_hinge_on``: in reference mode the only part of the regulariser with a
gradient), the hinge's weighted value and the whole regulariser's, and probe PGD accuracy.
FGSM-family runs log AV and NV too (the attack is the same), so the hinge AAER would see on
their trajectory is shown beside AAER's own.

``--grid DIR``: runs named ``<METHOD>_l3-<lamda3>_s<seed>`` (the lamda sensitivity grid);
their final PGD accuracy and CO flags per seed, next to the published lamda3 from the
first directory.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict

KEYS = ("aae_count", "aae_logit_var", "nae_logit_var", "aaer_hinge_on", "aaer_hinge_reg",
        "aaer_reg", "probe_pgd_acc", "probe_fgsm_acc")


def rows_of(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def final(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        res = json.load(f)
    mon = res.get("monitor") or {}
    with open(os.path.join(run_dir, "config.json")) as f:
        hparams = json.load(f)["method_resolved"]
    return {"pgd": res["evaluation"]["results"]["pgd"]["acc"],
            "clean": res["evaluation"]["results"]["clean"]["acc"],
            "co_epoch": mon.get("co_epoch"), "ends_in_co": mon.get("ends_in_co"),
            "lamda3": hparams.get("lamda3")}


def suite_runs(suite_dir: str, pattern: str) -> dict[tuple[str, int], str]:
    out = {}
    for name in sorted(os.listdir(suite_dir)):
        m = re.match(pattern, name)
        if m and os.path.exists(os.path.join(suite_dir, name, "results.json")):
            out[(m.group(1), int(m.group(2)))] = os.path.join(suite_dir, name)
    return out


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def trajectories(runs: dict[tuple[str, int], str]) -> None:
    by_method = defaultdict(list)
    for (method, seed), path in runs.items():
        by_method[method].append(rows_of(path))
    for method in ("RS-FGSM", "RS-AAER", "N-FGSM", "N-AAER"):
        if method not in by_method:
            continue
        seeds = by_method[method]
        print(f"\n{method} (mean over {len(seeds)} seeds)\n")
        print("| epoch | AAEs | AV | NV | AV - NV | hinge on | hinge reg | reg | probe PGD |")
        print("|---|---|---|---|---|---|---|---|---|")
        for e in range(max(len(r) for r in seeds)):
            at = [r[e] for r in seeds if e < len(r)]
            m = {k: mean([row.get(k) for row in at]) for k in KEYS}
            gap = None if m["aae_logit_var"] is None else m["aae_logit_var"] - m["nae_logit_var"]
            f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
            print(f"| {e} | {f(m['aae_count'], 0)} | {f(m['aae_logit_var'])} | "
                  f"{f(m['nae_logit_var'])} | {f(gap)} | {f(m['aaer_hinge_on'], 3)} | "
                  f"{f(m['aaer_hinge_reg'], 4)} | {f(m['aaer_reg'], 3)} | "
                  f"{f(m['probe_pgd_acc'], 3)} |")


def per_seed(runs: dict[tuple[str, int], str], method: str) -> None:
    print(f"\n{method} per seed: mean over epochs of hinge-on share and AV - NV, "
          "final PGD, CO epoch\n")
    print("| seed | hinge on (mean) | AV - NV (mean) | AAEs last epoch | final PGD | CO epoch |")
    print("|---|---|---|---|---|---|")
    for (m, seed), path in sorted(runs.items()):
        if m != method:
            continue
        rows = rows_of(path)
        fin = final(path)
        on = mean([r.get("aaer_hinge_on") for r in rows])
        gap = mean([r["aae_logit_var"] - r["nae_logit_var"] for r in rows
                    if "aae_logit_var" in r])
        print(f"| {seed} | {on:.3f} | {gap:.2f} | {rows[-1]['aae_count']} | "
              f"{100 * fin['pgd']:.1f} | {fin['co_epoch'] if fin['co_epoch'] is not None else '-'} |")


def grid(base: dict[tuple[str, int], str], grid_dir: str) -> None:
    cells = defaultdict(dict)          # (method, lamda3) -> seed -> final
    for name in sorted(os.listdir(grid_dir)):
        m = re.match(r"(.+)_l3-([0-9.]+)_s(\d+)$", name)
        if not m:
            continue
        path = os.path.join(grid_dir, name)
        key = (m.group(1), float(m.group(2)))
        if os.path.exists(os.path.join(path, "results.json")):
            cells[key][int(m.group(3))] = final(path)
        elif "training diverged" in open(os.path.join(path, "train.log")).read():
            cells[key][int(m.group(3))] = {"diverged": True}
    seeds = sorted({s for c in cells.values() for s in c})
    for (method, seed), path in base.items():
        if seed in seeds and any(k[0] == method for k in cells):
            fin = final(path)
            cells[(method, fin["lamda3"])][seed] = fin
    print(f"\nlamda3 grid, seeds {seeds}: final PGD-10 % per seed (CO epoch in brackets, "
          "* ends in CO), mean\n")
    print("| method | lamda3 | final PGD per seed | mean PGD | ends in CO |")
    print("|---|---|---|---|---|")
    for (method, l3) in sorted(cells):
        c = cells[(method, l3)]
        parts = []
        for s in seeds:
            if s not in c:
                parts.append("?")
                continue
            r = c[s]
            if r.get("diverged"):
                parts.append("diverged")
                continue
            co = "" if r["co_epoch"] is None else f" ({r['co_epoch']})"
            parts.append(f"{100 * r['pgd']:.1f}{co}{'*' if r['ends_in_co'] else ''}")
        done = [c[s] for s in seeds if s in c and not c[s].get("diverged")]
        print(f"| {method} | {l3:g} | {' / '.join(parts)} | "
              f"{100 * mean([r['pgd'] for r in done] or [float('nan')]):.1f} | "
              f"{sum(bool(r['ends_in_co']) or r['co_epoch'] is not None for r in done)}"
              f"/{len(done)} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite_dir", help="aaer reproduce co-fixture --out DIR (on-co warn)")
    p.add_argument("--grid", help="directory of lamda3 grid runs")
    a = p.parse_args()
    runs = suite_runs(a.suite_dir, r"co-fixture(?:-cifar10)?_(.+)_s(\d+)$")
    trajectories(runs)
    for method in ("RS-AAER", "N-AAER"):
        per_seed(runs, method)
    if a.grid:
        grid(runs, a.grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
