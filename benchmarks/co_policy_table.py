"""The CO fixture under two CO policies, side by side: the README's warn / rollback table.

    aaer reproduce co-fixture --seeds 10 --out runs/co-warn
    aaer reproduce co-fixture --seeds 10 --out runs/co-rollback --train-args "--on-co rollback"
    python benchmarks/co_policy_table.py runs/co-warn runs/co-rollback

Per method and policy: how many seeds end in CO (the last probes meet the CO rule, or the
run was flagged and trained on), how many end robust to nothing (last probe PGD accuracy
at most the rule's floor, 0.05: out of CO by the rule is then no rescue), the rollbacks and the epochs they discarded, final clean
and PGD accuracy (the fixture's final evaluation, PGD-10 on 1000 test points) per seed and
on average, and the training wall time. Then, per method, whether rollback kept every
seed's final PGD accuracy at least that of the same seed without it.

A warn run that was never flagged and whose last probe was no CO candidate has a rollback
twin that is the same computation (same seed, same code path: rollback acts only on a
flag, and a candidate at the last probe), so where ``rollback_dir`` lacks that twin its
cell is the warn run's, marked "=" (``--require-twins`` refuses instead).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aaer.runs import load_run  # noqa: E402
from co_fixture_campaign import needs_twin  # noqa: E402

METHODS = ("FGSM", "RS-FGSM", "N-FGSM", "RS-AAER", "N-AAER")
# a run of either fixture suite (aaer reproduce co-fixture | co-fixture-cifar10)
RUN_NAME = re.compile(r"^co-fixture(?:-cifar10)?_(.+)_s(\d+)$")


def methods_in(runs) -> list[str]:
    """The methods of ``runs`` (keys (method, seed)): the first table's five first."""
    found = {m for m, _ in runs}
    return [m for m in METHODS if m in found] + sorted(found - set(METHODS))


def read(suite_dir: str) -> dict[tuple[str, int], dict]:
    out = {}
    for name in sorted(os.listdir(suite_dir)):
        m = RUN_NAME.match(name)
        if not m or not os.path.exists(os.path.join(suite_dir, name, "results.json")):
            continue
        run = load_run(os.path.join(suite_dir, name))
        res, mon = run.results, run.results.get("monitor") or {}
        ev = res["evaluation"]["results"]
        ends_in_co = mon.get("ends_in_co")
        if ends_in_co is None:                # written before outcomes were recorded
            ends_in_co = bool(mon.get("co_detected")) and not mon.get("stopped")
        # warn: a flagged run trains on in CO
        if mon.get("probe", {}).get("on_co") == "warn" and mon.get("co_detected"):
            ends_in_co = True
        out[(m.group(1), int(m.group(2)))] = {
            "twin_needed": needs_twin(os.path.join(suite_dir, name)),
            "clean": ev["clean"]["acc"], "pgd": ev["pgd"]["acc"],
            "ends_in_co": bool(ends_in_co), "rollbacks": len(mon.get("rollbacks", [])),
            "discarded": mon.get("epochs_discarded", 0.0), "seconds": res["train_seconds"],
            "outcome": mon.get("outcome", ""),
            "cpu_s": _cpu_seconds(os.path.join(suite_dir, name)),
            # out of CO by the rule is no rescue when the model is robust to nothing
            "weak": run.last_probe()["probe_pgd_acc"] <= mon["probe"]["rule"]["floor"]}
    return out


def _cpu_seconds(run_dir: str):
    """The run's process CPU seconds, when co_fixture_campaign.py recorded them (not for a
    resumed run: its record holds the last process's share alone)."""
    try:
        with open(run_dir + ".usage.json") as f:
            usage = json.load(f)
    except FileNotFoundError:
        return None
    return None if usage.get("resumed") else usage.get("cpu_s")


def cells(rows, key, fmt):
    return "/".join(fmt(r[key]) for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("warn_dir")
    p.add_argument("rollback_dir", nargs="?", help="omit: the warn runs only")
    p.add_argument("--cpu", action="store_true", help="add the mean process CPU seconds "
                   "(<run>.usage.json, written by co_fixture_campaign.py)")
    p.add_argument("--require-twins", action="store_true",
                   help="every warn run needs its rollback run (no '=' cells)")
    a = p.parse_args()
    policies = {"warn": read(a.warn_dir)}
    if a.rollback_dir:
        policies["rollback"] = read(a.rollback_dir)
    for key, w in policies["warn"].items() if a.rollback_dir else ():
        if key in policies["rollback"]:
            continue
        if w["twin_needed"] or a.require_twins:
            print(f"missing: rollback run of {key[0]} seed {key[1]}", file=sys.stderr)
            continue
        policies["rollback"][key] = {**w, "same_as_warn": True}
    seeds = sorted({s for pol in policies.values() for (_, s) in pol})
    print(f"seeds {seeds[0]}-{seeds[-1]}; cells per seed in seed order; accuracies in %; "
          "=: the warn run's (never flagged, no candidate at the end: the same computation)\n")
    print("| method | policy | ends in CO | final probe PGD <= 0.05 | rollbacks (epochs "
          "discarded) | final clean | final PGD | mean clean / PGD | wall s (mean) |"
          + (" CPU s (mean) |" if a.cpu else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if a.cpu else ""))
    verdicts = []
    for method in methods_in({k for runs in policies.values() for k in runs}):
        for policy, runs in policies.items():
            rows = [runs[(method, s)] for s in seeds if (method, s) in runs]
            if not rows:
                continue
            n = len(rows)
            have = [s for s in seeds if (method, s) in runs]

            def count(key):
                hit = [s for s, r in zip(have, rows) if r[key]]
                return f"{len(hit)}/{n}" + (f" (s{','.join(map(str, hit))})" if hit else "")

            co, weak = count("ends_in_co"), count("weak")
            rb = "/".join("=" if r.get("same_as_warn") else
                          f"{r['rollbacks']}({r['discarded']:g})" for r in rows) \
                if policy == "rollback" else "-"
            pct = lambda v: f"{100 * v:.1f}"
            mc = sum(r["clean"] for r in rows) / n
            mp = sum(r["pgd"] for r in rows) / n
            wall = sum(r["seconds"] for r in rows) / n
            cpu = [r["cpu_s"] for r in rows if r.get("cpu_s") is not None]
            more = (f" {sum(cpu) / len(cpu):.0f} |" if cpu else " - |") if a.cpu else ""
            print(f"| {method} | {policy} | {co} | {weak} | {rb} | {cells(rows, 'clean', pct)} | "
                  f"{cells(rows, 'pgd', pct)} | {pct(mc)} / {pct(mp)} | {wall:.0f} |{more}")
        both = [(s, policies["warn"].get((method, s)),
                 policies.get("rollback", {}).get((method, s))) for s in seeds]
        both = [(s, w, r) for s, w, r in both if w and r]
        if both:
            worse = [s for s, w, r in both if r["pgd"] < w["pgd"]]
            verdicts.append(f"{method}: rollback final PGD >= warn's in "
                            f"{len(both) - len(worse)}/{len(both)} seeds"
                            + (f" (lower in seed(s) {worse})" if worse else ""))
    print()
    for v in verdicts:
        print("- " + v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
