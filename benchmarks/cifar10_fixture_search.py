"""The search for the CIFAR-10 CO fixture: RS-FGSM on scaled-down PreActResNet-18s.

    python benchmarks/cifar10_fixture_search.py --out runs/cifar-search [--jobs 2] \
        [--only w4-n10000-e16-ep15-lr0.2] [--seeds 0-4]
    python benchmarks/cifar10_fixture_search.py --out runs/cifar-search --table

Each configuration is the AAER paper's CIFAR-10 recipe (RS-FGSM alpha 1.25, batch 128, SGD
momentum 0.9, weight decay 5e-4, cyclic lr peaking half-way, crop + flip) with a smaller
model, fewer training images, fewer epochs and the lr peak as the knobs, on the CIFAR-10
JPEG copy (``../shared/datasets/cifar10-jpeg.zip``), with the CO monitor's per-epoch probe
(PGD-10 and FGSM on the first 500 test points) and the final PGD-10 evaluation of the
fixture (first 1000 test points). A run is one ``aaer train`` process with one torch
thread, so two run side by side on the 2-core machine; its CPU seconds (os.wait4) go to
``<run>.usage.json``. Finished runs are skipped, so it can be stopped and started again.
``--table`` prints the markdown table of every configuration tried (README).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "cifar10-jpeg.zip")

# name -> (width, n_train, eps, epochs, lr_max), in the order they were tried
CONFIGS = {
    "w4-n10000-e16-ep15-lr0.2": (4, 10000, 16, 15, 0.2),
    "w4-n5000-e16-ep15-lr0.2": (4, 5000, 16, 15, 0.2),
    "w4-n10000-e16-ep15-lr0.3": (4, 10000, 16, 15, 0.3),
    "w4-n15000-e16-ep10-lr0.2": (4, 15000, 16, 10, 0.2),
}


def flags(width: int, n_train: int, eps: float, epochs: int, lr: float) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", DATA, "--model",
            f"preactresnet18-w{width}", "--method", "rs-fgsm", "--epsilon", str(eps),
            "--n-train", str(n_train), "--epochs", str(epochs), "--lr-max", str(lr),
            "--batch-size", "128", "--probe-n", "500", "--probe-steps", "10",
            "--eval-protocol", "quick", "--n-eval", "1000", "--device", "cpu",
            "--no-progress"]


def seeds_of(text: str) -> list[int]:
    if "," in text:
        return [int(s) for s in text.split(",")]
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def outcome(d: str) -> dict:
    """CO flag, epochs, final probe and evaluation, time of one finished run."""
    res = json.load(open(os.path.join(d, "results.json")))
    rows = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl")) if x.strip()]
    probes = [r for r in rows if "probe_pgd_acc" in r]
    usage = json.load(open(d + ".usage.json")) if os.path.exists(d + ".usage.json") else {}
    mon = res.get("monitor") or {}
    return {"co": bool(mon.get("co_detected")), "co_epoch": mon.get("co_epoch"),
            "ends_in_co": bool(mon.get("ends_in_co")),
            "best_probe_pgd": max(r["probe_pgd_acc"] for r in probes),
            "final_probe_pgd": probes[-1]["probe_pgd_acc"],
            "final_probe_fgsm": probes[-1]["probe_fgsm_acc"],
            "final_probe_clean": probes[-1]["probe_clean_acc"],
            "final_train_acc": rows[-1]["train_acc"],
            "final_pgd": res["evaluation"]["results"]["pgd"]["acc"],
            "final_clean": res["evaluation"]["results"]["clean"]["acc"],
            "train_s": res["train_seconds"], "wall_s": usage.get("wall_s"),
            "cpu_s": usage.get("cpu_s")}


def table(out: str) -> str:
    lines = ["| configuration (RS-FGSM) | width | train images | eps | epochs | lr peak | seed | "
             "CO from epoch | ends in CO | best / final probe PGD | final probe clean / FGSM | final train acc | "
             "final clean / PGD-10 | train s | process CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (w, n, eps, ep, lr) in CONFIGS.items():
        for seed in range(10):
            d = os.path.join(out, f"{name}_s{seed}")
            if not os.path.exists(os.path.join(d, "results.json")):
                continue
            o = outcome(d)
            co = str(o["co_epoch"]) if o["co"] else "no"
            lines.append(f"| {name} | {w} | {n} | {eps} | {ep} | {lr} | {seed} | {co} | "
                         f"{'yes' if o['ends_in_co'] else 'no'} | "
                         f"{o['best_probe_pgd']:.3f} / {o['final_probe_pgd']:.3f} | "
                         f"{o['final_probe_clean']:.3f} / {o['final_probe_fgsm']:.3f} | "
                         f"{o['final_train_acc']:.3f} | "
                         f"{o['final_clean']:.3f} / {o['final_pgd']:.3f} | "
                         f"{o['train_s']:.0f} | "
                         f"{'-' if o['cpu_s'] is None else format(o['cpu_s'], '.0f')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cifar-search")
    p.add_argument("--only", action="append", help="a configuration name (repeatable)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4, 2 or 4,1,0,2,3 (in this order)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the table of finished runs")
    a = p.parse_args()
    if a.table:
        print(table(a.out))
        return 0
    names = a.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; valid: {list(CONFIGS)}")
    todo = [(n, s) for n in names for s in seeds_of(a.seeds)
            if not os.path.exists(os.path.join(a.out, f"{n}_s{s}", "results.json"))]
    os.makedirs(a.out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    running: dict[int, tuple] = {}
    while todo or running:
        while todo and len(running) < a.jobs:
            name, seed = todo.pop(0)
            d = os.path.join(a.out, f"{name}_s{seed}")
            resume = os.path.exists(os.path.join(d, "checkpoint.pt"))
            cmd = [sys.executable, "-m", "aaer", "train"] + (
                ["--resume", d] if resume else
                flags(*CONFIGS[name]) + ["--seed", str(seed), "--out-dir", d, "--overwrite"])
            log = open(d + ".log", "a")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (proc, d, time.time())
            print(f"start {os.path.basename(d)}", flush=True)
        time.sleep(2)
        for pid in list(running):
            proc, d, t0 = running[pid]
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == 0:
                continue
            del running[pid]
            with open(d + ".usage.json", "w") as f:
                json.dump({"wall_s": round(time.time() - t0, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                           "exit": os.waitstatus_to_exitcode(status)}, f)
            print(f"done {os.path.basename(d)} exit {os.waitstatus_to_exitcode(status)} "
                  f"in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
