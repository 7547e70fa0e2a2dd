"""The CO monitor's misses on finished warn runs: runs it never flagged that lost their
robustness anyway.

    python benchmarks/co_monitor_misses.py benchmarks/results/co-fixture/co-warn \
        benchmarks/results/co-fixture-cifar10/co-warn [--seeds 0-4]

A run *lost its robustness* when its last probe PGD accuracy is at most max(co_floor, half
its best probe PGD accuracy): it ends robust to nothing, or with less than half the
robustness it had. It did so *as CO does* when FGSM accuracy held while PGD accuracy fell
(the last probe's FGSM accuracy at least 0.25 above its PGD accuracy, or FGSM accuracy
fell less than half as much as PGD accuracy since the best PGD probe); a run that became
robust to neither attack is not in CO, which is what the monitor is for. A run that lost
its robustness as CO does is a *miss* when the monitor neither flagged it during training
nor said at the end that it ends in CO (a last probe meeting the rule with no probe left
to confirm it: the outcome "ends in CO", on which --on-co rollback acts too). Runs are named <suite>_<METHOD>_s<seed> (aaer
reproduce); ``--seeds`` keeps those seeds only (the issue allows deciding the rule from
seeds 0-4 alone).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aaer.runs import Row, load_run  # noqa: E402

NAME = re.compile(r"^(?P<suite>.+?)_(?P<method>[^_]+)_s(?P<seed>\d+)$")


def verdict(run) -> dict:
    probes = [r for r in run.rows if Row.PROBE_PGD in r]
    at_best = max(probes, key=lambda r: r[Row.PROBE_PGD])
    best, last = at_best[Row.PROBE_PGD], probes[-1][Row.PROBE_PGD]
    fgsm_best, fgsm_last = at_best[Row.PROBE_FGSM], probes[-1][Row.PROBE_FGSM]
    as_co = fgsm_last >= last + 0.25 or (fgsm_best - fgsm_last) < 0.5 * (best - last)
    mon = run.results.get("monitor") or {}
    floor = run.settings.monitor.co_floor
    flagged = bool(mon.get("co_detected"))
    lost = last <= max(floor, 0.5 * best)
    return {"flagged": flagged, "ends_in_co": bool(mon.get("ends_in_co")),
            "co_epoch": mon.get("co_epoch"), "best": best, "last": last, "lost": lost,
            "as_co": lost and as_co,
            "miss": lost and as_co and not flagged and not mon.get("ends_in_co"),
            "pgd": [round(r[Row.PROBE_PGD], 3) for r in probes],
            "fgsm": [round(r.get(Row.PROBE_FGSM, float("nan")), 3) for r in probes]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="folders of warn runs")
    p.add_argument("--seeds", default=None, help="e.g. 0-4 (default: all)")
    a = p.parse_args()
    keep = None
    if a.seeds:
        lo, _, hi = a.seeds.partition("-")
        keep = set(range(int(lo), int(hi or lo) + 1))
    print("| runs | run | flagged (epoch) | ends in CO | best / last probe PGD | lost robustness "
          "| as CO does | miss |")
    print("|---|---|---|---|---|---|---|---|")
    missed, lost, as_co, total = [], 0, 0, 0
    for folder in a.dirs:
        for name in sorted(os.listdir(folder)):
            m = NAME.match(name)
            d = os.path.join(folder, name)
            if not m or not os.path.exists(os.path.join(d, "results.json")):
                continue
            if keep is not None and int(m["seed"]) not in keep:
                continue
            v = verdict(load_run(d))
            total += 1
            if v["miss"]:
                missed.append((name, v))
            lost += v["lost"]
            as_co += v["as_co"]
            flag = f"yes ({v['co_epoch']})" if v["flagged"] else "no"
            print(f"| {os.path.basename(os.path.dirname(os.path.abspath(folder)))} | {name} | "
                  f"{flag} | {'yes' if v['ends_in_co'] else 'no'} | {v['best']:.3f} / "
                  f"{v['last']:.3f} | {'yes' if v['lost'] else 'no'} | "
                  f"{'yes' if v['as_co'] else ('no' if v['lost'] else '')} | "
                  f"{'**MISS**' if v['miss'] else ''} |")
    print(f"\n{total} runs, {lost} lost their robustness, {as_co} as CO does, {len(missed)} "
          "of those missed")
    for name, v in missed:
        print(f"- {name}: probe PGD {v['pgd']}, FGSM {v['fgsm']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
