"""The CO fixture's warn / rollback table and lamda grid as one resumable campaign.

    python benchmarks/co_fixture_campaign.py --out runs [--seeds 10] [--jobs 2]
    python benchmarks/co_fixture_campaign.py --out runs --seeds 5 --no-grid --no-twins \
        --methods ssat,nuat,gat          # other methods, warn runs only
    python benchmarks/co_policy_table.py runs/co-warn runs/co-rollback
    python benchmarks/aaer_fixture_analysis.py runs/co-warn --grid runs/co-grid

The same runs as ``aaer reproduce co-fixture --seeds N`` with and without
``--train-args "--on-co rollback"`` (and the same fixture with --lamda3), in an order that
finishes whole seeds first, minus the rollback twins that are the same computation as their
warn run: a rollback run differs from its warn run only once the monitor flags CO or the
last probe is a CO candidate, so a twin starts only for a warn run that did either (the
table marks the others "="). ``jobs`` runs at a time with cores/jobs torch threads each;
killed and started again, it skips finished runs and resumes interrupted ones. Each run's
CPU seconds (user + system, from os.wait4: a measure a loaded machine does not inflate as
much as the wall clock) go to <run>.usage.json beside its log; a resumed run's are its last
process's alone, marked "resumed", and the tables leave them out.

Order: per seed of the first five, the five methods' warn runs, each rollback twin as soon
as its warn run has finished; the N-AAER lamda3 3.0 grid (seeds 0-4); the other seeds;
the rest of the grid (N-AAER 1.5, RS-AAER 3.0 and 0.75).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aaer.experiments.reproduce import FIXTURE_SUITES, METHOD_LABELS, fixture_flags  # noqa: E402

METHODS = (("fgsm", "FGSM"), ("rs-fgsm", "RS-FGSM"), ("n-fgsm", "N-FGSM"),
           ("rs-aaer", "RS-AAER"), ("n-aaer", "N-AAER"))
GRID = (("n-aaer", "N-AAER", "3.0"), ("n-aaer", "N-AAER", "1.5"),
        ("rs-aaer", "RS-AAER", "3.0"), ("rs-aaer", "RS-AAER", "0.75"))
GRID_SEEDS = 5                      # the grid is run on seeds 0-4 only


def finished(d: str) -> bool:
    return os.path.exists(os.path.join(d, "results.json"))


def needs_twin(d: str) -> bool:
    """Did the warn run in ``d`` flag CO or end on a CO candidate?"""
    with open(os.path.join(d, "results.json")) as f:
        res = json.load(f)
    with open(os.path.join(d, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return bool(res["monitor"]["co_detected"]) or bool(rows[-1].get("co_candidate"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs", help="parent of co-warn/, co-rollback/, co-grid/")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--fixture", default="fashion-mnist", choices=sorted(FIXTURE_SUITES.values()),
                   help="which CO fixture (runs are named <suite>_<METHOD>_s<seed>, as by aaer "
                   "reproduce co-fixture / co-fixture-cifar10)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--data-dir", help="the fixture's data (default: the fixture's own look-up)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--no-grid", action="store_true")
    p.add_argument("--no-twins", action="store_true", help="warn runs only")
    p.add_argument("--methods", help="comma list of methods (default: the fixture's five: "
                   + ", ".join(m for m, _ in METHODS) + ")")
    p.add_argument("--grid", action="append", metavar="METHOD=LAMDA3",
                   help="only these grid points (e.g. N-AAER=3.0; repeatable); default: all "
                   "of " + ", ".join(f"{lab}={l3}" for _, lab, l3 in GRID))
    a = p.parse_args()
    methods = METHODS if not a.methods else \
        tuple((m, METHOD_LABELS.get(m, m)) for m in a.methods.split(","))
    chosen = GRID
    if a.grid:
        chosen = tuple(g for g in GRID if f"{g[1]}={g[2]}" in a.grid)
        unknown = sorted(set(a.grid) - {f"{g[1]}={g[2]}" for g in GRID})
        if unknown:
            p.error(f"unknown grid point(s) {', '.join(unknown)}; valid: "
                    + ", ".join(f"{lab}={l3}" for _, lab, l3 in GRID))
    aaer = [sys.executable, "-m", "aaer"]          # as aaer reproduce starts its runs
    suite = {f: name for name, f in FIXTURE_SUITES.items()}[a.fixture]

    def job(kind, method, label, seed, extra=()):
        sub = {"warn": "co-warn", "rollback": "co-rollback", "grid": "co-grid"}[kind]
        name = f"{suite}_{label}_s{seed}" if kind != "grid" else \
            f"{label}_l3-{extra[1]}_s{seed}"
        d = os.path.join(a.out, sub, name)
        data = ["--data-dir", a.data_dir] if a.data_dir else []
        argv = [*aaer, "train", *fixture_flags(method, a.fixture), *data, *extra, "--seed", str(seed),
                "--out-dir", d, "--no-progress"]
        return d, argv, (kind, method, label, seed)

    def warn(seed):
        return [job("warn", m, lab, seed) for m, lab in methods]

    def grid(spec):
        return [] if a.no_grid or spec not in chosen else \
            [job("grid", m, lab, s, ("--lamda3", l3)) for s in range(min(GRID_SEEDS, a.seeds))
             for m, lab, l3 in [spec]]

    def twin(kind):
        _, method, label, seed = kind
        return job("rollback", method, label, seed, ("--on-co", "rollback"))

    order = [j for s in range(min(5, a.seeds)) for j in warn(s)] + grid(GRID[0]) + \
        [j for s in range(5, a.seeds) for j in warn(s)] + \
        [j for spec in GRID[1:] for j in grid(spec)]
    queue, twins = [], []
    for j in order:
        if not finished(j[0]):
            queue.append(j)
        elif j[2][0] == "warn" and not a.no_twins and needs_twin(j[0]) and \
                not finished(twin(j[2])[0]):
            twins.append(twin(j[2]))
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    running: dict[str, tuple] = {}

    def say(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    say(f"{len(queue)} runs to do, {len(twins)} rollback twins pending, {a.jobs} at a time")
    while queue or twins or running:
        while len(running) < a.jobs and (twins or queue):
            d, argv, kind = twins.pop(0) if twins else queue.pop(0)
            resumed = os.path.exists(os.path.join(d, "checkpoint.pt"))
            if resumed:
                argv = [*aaer, "train", "--resume", d]
            os.makedirs(os.path.dirname(d), exist_ok=True)
            log = open(d + ".log", "ab")
            running[d] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                          kind, time.time(), log, resumed)
            say(f"start {kind[0]} {os.path.basename(d)}")
        time.sleep(2)
        for d, (proc, kind, t0, log, resumed) in list(running.items()):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            del running[d]
            log.close()
            with open(d + ".usage.json", "w") as f:
                json.dump({"wall_s": round(time.time() - t0, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                           "resumed": resumed}, f)     # resumed: this process's part only
            ok = proc.returncode == 0
            say(f"{'done' if ok else f'FAILED (exit {proc.returncode}, see {d}.log)'} "
                f"{kind[0]} {os.path.basename(d)} ({time.time() - t0:.0f} s)")
            if ok and kind[0] == "warn" and not a.no_twins and needs_twin(d):
                twins.append(twin(kind))
    say("all done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
