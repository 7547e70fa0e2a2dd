"""Issue 30's GPU lease in one call: the paper's claim at CIFAR scale and the step's speed.

    bash benchmarks/gpu_lease.sh                 # on the lent GPU; results under $OUT
    bash benchmarks/gpu_lease.sh --tiny          # the same, end to end, on a CPU in minutes

Science: CIFAR-10 (JPEG q75, ``data/cifar10-jpeg.npz`` from benchmarks/gpu_data.py, unpacked
on the machine), PreActResNet18, 30 epochs, the AAER paper's recipe, one seed: RS-FGSM eps
16 (expected to overfit), RS-AAER eps 16, N-AAER eps 16, RS-AAER eps 8 and N-FGSM eps 16
(AAER's lambdas from its published CIFAR-10 table), each watched by the CO monitor's probe
(clean / FGSM / PGD-10 on the first 1000 test points, every epoch), all five packed on the
one GPU at once (aaer.experiments.executors.LocalExecutor, the code of `aaer reproduce
--runs-per-gpu 5`). Then `aaer eval` per run: PGD-50-10 `lineage` (full test set; broken
points are not attacked again), AutoAttack standard on the first 1000 points, PGD-50-10
`lineage-exact` (full test set, the reference's max-loss restarts, no skipping).
Performance: one run's step for fp32 / bf16 x eager / CUDA graphs (bench_gpu.py
--step-matrix) and aggregate images/s of K = 1, 2, 4, 8 packed runs (bench_gpu.py
--packing). The training precision is picked from the eager measurement, by a rule written
below before any number was seen, and recorded. Nothing else is chosen from these runs.

Time budget (--budget-s, 530 s by default, so a `run` call with timeout 600 s leaves room).
Estimates for an H100 where nothing has been measured yet (no 30-epoch run and no absolute
H100 images/s of this step exist in the project; the README's H100 numbers are ratios), so
each part has a deadline, parts run in the order below, and whatever does not fit is
recorded as "not run: time" and resumes in a second call on the same warm machine (runs
live in runs/gpu-lease/, ignored by git, which a warm machine keeps between calls; an
interrupted run resumes from its checkpoint, a finished run or evaluation is skipped):

- data: unpack 19.5 MiB, decode the 60,000 JPEGs once: ~20 s (15 s measured on this
  loaded 2-core CPU);
- one run's eager step, fp32 and bf16, 40 timed steps each: ~30 s; picks the precision;
- training, 5 runs x 30 epochs x 50,000 images packed (7.5 M images): ~375 s at 20,000
  images/s in all, ~750 s at 10,000, plus ~10% for the per-epoch probe (PGD-10 and FGSM
  on 1000 points); capped at what is left minus 150 s;
- the packing table, K = 1, 2, 4, 8: ~90 s (a process start, ~10 s, per K);
- PGD-50-10 lineage, 10,000 points (broken points not attacked again): ~60 s a run;
- AutoAttack standard, first 1000 points: ~60 s a run;
- PGD-50-10 lineage-exact, 10,000 points x 10 restarts x 50 steps: ~125 s a run;
  the five runs' evaluations of a protocol run at once, so the GPU is shared;
- the step with CUDA graphs, fp32 and bf16: ~60 s of compilation each; last.

The sum, about 31-38 minutes, is three to four times one call's 9 minutes (and twice a
drawn task's 15 minutes of device time): one call trains the five runs (or most of their
epochs) and measures the step and the packing; the evaluations and the CUDA-graph step
need further calls. That is the honest size of this lease.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (label, method, eps): the five runs, in the order they are packed
RUNS = (("RS-FGSM", "rs-fgsm", 16), ("RS-AAER", "rs-aaer", 16), ("N-AAER", "n-aaer", 16),
        ("RS-AAER", "rs-aaer", 8), ("N-FGSM", "n-fgsm", 16))
# the precision rule, fixed before any measurement: bf16 when its eager step is at least
# 10% faster than fp32's and its first loss within 1% of fp32's (same weights, batch, noise)
BF16_MIN_SPEEDUP, BF16_MAX_LOSS_DIFF = 1.10, 0.01
PHASES = ("data", "step", "train", "packing", "eval", "graphs")
# evaluations, in priority order: (name, protocol, first N test points or None: all)
EVALS = (("pgd_lineage", "lineage", None), ("autoattack_1000", "autoattack", 1000),
         ("pgd_lineage_exact", "lineage-exact", None))
RESERVE_S = 20           # kept for collecting the results and the report


class Clock:
    """Seconds left of the budget."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.time(), budget_s

    def left(self, reserve: float = RESERVE_S) -> float:
        return self.budget - (time.time() - self.t0) - reserve

    def elapsed(self) -> float:
        return round(time.time() - self.t0, 1)


def settings(tiny: bool) -> dict:
    """What differs between the lease and its CPU rehearsal."""
    if tiny:
        return {"device": "cpu", "train": ["--model", "small-cnn", "--epochs", "1",
                                           "--n-train", "256", "--batch-size", "64",
                                           "--probe-n", "64"],
                "n_eval": 64, "aa_n": 32, "bench": ["--device", "cpu", "--tiny", "--steps", "2"],
                "packing": "1,2"}
    return {"device": "cuda", "train": ["--model", "preactresnet18", "--epochs", "30",
                                        "--batch-size", "128", "--probe-n", "1000"],
            "n_eval": None, "aa_n": 1000,
            "bench": ["--device", "cuda", "--steps", "40", "--warmup", "10"],
            "packing": "1,2,4,8"}


def run_flags(method: str, eps: int) -> list[str]:
    """`aaer train` flags of one run beyond the common ones: AAER's published lambdas."""
    from aaer.methods.aaer import N_LAMBDAS, RS_LAMBDAS
    flags = ["--method", method, "--epsilon", str(eps)]
    if method in ("rs-aaer", "n-aaer"):
        l2, l3 = (RS_LAMBDAS if method == "rs-aaer" else N_LAMBDAS)[("cifar10", eps)]
        flags += ["--lamda1", "1.0", "--lamda2", f"{l2:g}", "--lamda3", f"{l3:g}"]
    return flags


def suite_runs(zip_path: str, precision: str, tiny: bool):
    from aaer.experiments.reproduce import SuiteRun
    s = settings(tiny)
    common = ["--dataset", "imagefolder", "--normalization", "cifar10", "--data-dir", zip_path,
              *s["train"],
              "--eval-protocol", "none", "--device", s["device"], "--precision", precision]
    return [SuiteRun(f"{label}_{eps}", label, float(eps), 0, [*common, *run_flags(m, eps)])
            for label, m, eps in RUNS]


def device_facts() -> dict:
    import torch
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(device=torch.cuda.get_device_name(0),
                     memory_gib=round(p.total_memory / 2**30, 1),
                     bf16=torch.cuda.is_bf16_supported())
    else:
        from aaer.engine.environment import cpu_name
        facts.update(device=f"CPU: {cpu_name()}", cores=os.cpu_count())
    return facts


def prepare_data(pack: str, work: str) -> dict:
    """Unpack the zip once (kept while the digest matches) and decode it once into aaer's
    cache, so the packed runs read the decoded tensors."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_data
    from aaer.data import load_dataset
    zip_path = os.path.join(work, "data", "cifar10-jpeg.zip")
    stamp = zip_path + ".sha256"
    with __import__("numpy").load(pack) as f:
        digest = f["sha256"].tobytes().decode()
    t = time.time()
    if not (os.path.exists(zip_path) and os.path.exists(stamp)
            and open(stamp).read() == digest):
        gpu_data.unpack(pack, zip_path)
        with open(stamp, "w") as f:
            f.write(digest)
    t_unpack = time.time() - t
    ds = load_dataset("imagefolder", zip_path)
    return {"zip": zip_path, "sha256": digest, "unpack_s": round(t_unpack, 1),
            "decode_s": round(time.time() - t - t_unpack, 1),
            "train": list(ds.train_x.shape), "test": list(ds.test_x.shape),
            "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std)}


def bench(args_list: list[str], json_path: str, timeout: float, log_path: str) -> dict:
    """bench_gpu.py with ``args_list``; its JSON, or what stopped it."""
    if timeout < 5:
        return {"not_run": "time"}
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks",
                                                                "bench_gpu.py"),
                                   *args_list, "--json", json_path], stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": ROOT})
        except subprocess.TimeoutExpired:
            return {"not_run": f"time: stopped after {timeout:.0f} s"}
    if proc.returncode != 0 or not os.path.exists(json_path):
        return {"error": f"bench_gpu.py exit {proc.returncode}; see {log_path}"}
    return json.load(open(json_path))


def pick_precision(matrix: dict) -> dict:
    """bf16 or fp32 by the rule above, from the eager rows of --step-matrix."""
    rows = {(r["precision"], r["step"]): r for r in matrix.get("step_matrix", [])}
    fp32, bf16 = rows.get(("fp32", "eager"), {}), rows.get(("bf16", "eager"), {})
    choice = {"rule": f"bf16 if its eager images/s >= {BF16_MIN_SPEEDUP} x fp32's and its "
                      f"first loss within {BF16_MAX_LOSS_DIFF:.0%} of fp32's, else fp32",
              "precision": "fp32"}
    if "images_per_s" in fp32 and "images_per_s" in bf16:
        speedup = bf16["images_per_s"] / fp32["images_per_s"]
        diff = bf16.get("first_loss_vs_eager_fp32", 1.0)
        choice.update(bf16_speedup=round(speedup, 3), bf16_first_loss_diff=diff)
        if speedup >= BF16_MIN_SPEEDUP and diff <= BF16_MAX_LOSS_DIFF:
            choice["precision"] = "bf16"
    else:
        choice["why"] = "no eager fp32 and bf16 measurement: the reference, fp32"
    return choice


def train(runs, runs_dir: str, deadline_s: float, log_path: str) -> dict:
    """The runs packed on the device at once, in a process group stopped with SIGTERM at
    the deadline (each `aaer train` then writes its checkpoint and exits)."""
    if deadline_s < 10:
        return {"not_run": "time"}
    spec = os.path.join(runs_dir, "lease_runs.json")
    os.makedirs(runs_dir, exist_ok=True)
    with open(spec, "w") as f:
        json.dump([r.__dict__ for r in runs], f)
    t = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--train-worker",
                                 spec, "--work", runs_dir], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": ROOT})
        try:
            proc.wait(timeout=deadline_s)
            stopped = False
        except subprocess.TimeoutExpired:
            stopped = True
            stop_group(proc)
    counts = {}
    if not stopped and os.path.exists(spec + ".counts"):
        counts = json.load(open(spec + ".counts"))
    return {"seconds": round(time.time() - t, 1), "stopped_at_deadline": stopped,
            "packed": len(runs), **counts}


def stop_group(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM to a process group, then wait until every member has gone (checkpoints)."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.time() + grace_s
    while time.time() < end:
        proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def train_worker(spec: str, runs_dir: str) -> int:
    """The training phase's process: LocalExecutor, K = every run, on the one device."""
    from aaer.experiments.executors import LocalExecutor
    from aaer.experiments.reproduce import SuiteRun
    runs = [SuiteRun(**r) for r in json.load(open(spec))]
    counts = LocalExecutor(jobs=1, runs_per_gpu=len(runs)).submit(runs, runs_dir)
    with open(spec + ".counts", "w") as f:
        json.dump(counts, f)
    return 0


def evaluate(runs, runs_dir: str, device: str, tiny: bool, clock: Clock, logs: str) -> dict:
    """`aaer eval` of every finished run, one protocol at a time (all runs at once), in
    EVALS' order, each stopped at the deadline; an existing result is kept."""
    from aaer.runs import RunDir
    s = settings(tiny)
    done = {}
    finished = [r for r in runs if RunDir(os.path.join(runs_dir, r.name)).state == "finished"]
    for name, protocol, n in EVALS:
        n = s["aa_n"] if protocol == "autoattack" else (s["n_eval"] if tiny else n)
        left = clock.left()
        procs = []
        for r in finished:
            out = os.path.join(runs_dir, r.name, f"eval_{name}.json")
            if os.path.exists(out):
                continue
            argv = [sys.executable, "-m", "aaer", "eval", "--checkpoint",
                    os.path.join(runs_dir, r.name), "--protocol", protocol, "--device", device,
                    "--out", out] + (["--n-eval", str(n)] if n else [])
            if left < 10:
                continue
            log = open(os.path.join(logs, f"eval_{name}_{r.name}.log"), "w")
            procs.append((log, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True,
                                                env={**os.environ, "PYTHONPATH": ROOT})))
        t = time.time()
        for log, p in procs:
            try:
                p.wait(timeout=max(1.0, left - (time.time() - t)))
            except subprocess.TimeoutExpired:
                stop_group(p, grace_s=5)
            log.close()
        done[name] = {"protocol": protocol, "n": n, "started": len(procs),
                      "seconds": round(time.time() - t, 1)}
    return done


def result_row(run, runs_dir: str) -> dict:
    """What one run shows: the CO monitor's verdict and trajectory, its speed, and each
    evaluation that exists (accuracies as fractions)."""
    from aaer.experiments.reproduce import monitor_outcome, run_trajectory
    from aaer.runs import Row, RunDir, load_run
    d = os.path.join(runs_dir, run.name)
    row = {"run": run.name, "method": run.label, "eps": run.eps,
           "state": RunDir(d).state}
    rows = RunDir(d).metrics() if os.path.isdir(d) else []
    if rows:
        row["epochs_done"] = len(rows)
        row.update(run_trajectory(rows))
        row["images_per_s_last_epoch"] = rows[-1].get(Row.IMAGES_PER_S)
        # the monitor's flag in the epochs trained so far (a run a deadline stopped)
        flagged = [r[Row.EPOCH] for r in rows if r.get(Row.CO_FLAG)]
        row["co_so_far"] = (f"yes ({flagged[0]})" if flagged else "no") + \
            f" in {len(rows)} epoch(s)"
    if row["state"] == "finished":
        r = load_run(d, need_epochs=False)
        row["co"] = r.monitored()
        row["co_epoch"] = r.co_epoch() if row["co"] else None
        row.update(monitor_outcome(r.results))
        row["train_seconds"] = r.results.get("train_seconds")
        row["precision"] = (r.config.get("performance") or {}).get("precision")
    for name, protocol, _ in EVALS:
        path = os.path.join(d, f"eval_{name}.json")
        if not os.path.exists(path):
            row[name] = "not run"
            continue
        ev = json.load(open(path))
        res = ev.get("results", ev)
        row[name] = {k: (res.get(k) or {}).get("acc") for k in ("clean", "pgd", "autoattack")
                     if isinstance(res.get(k), dict)}
        row[name]["n"] = next((v.get("n") for v in res.values() if isinstance(v, dict)
                               and v.get("n")), None)
    return row


WHAT = {"tiny": "--tiny rehearsal: a small CNN, 1 epoch, 256 images: the numbers mean nothing",
        "full": "CIFAR-10 (JPEG q75), PreActResNet18, 30 epochs, one seed"}


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def markdown(lease: dict) -> str:
    """The results table of the README's skeleton, filled from this lease's files."""
    dev = lease["device"].get("device", "?")
    lines = [f"# GPU lease (issue 30): {dev}", "",
             f"{WHAT['tiny' if lease['tiny'] else 'full']}; precision "
             f"{lease['precision']['precision']} ({lease['precision']['rule']}).", "",
             "| run | state | epochs | clean | PGD-50-10 lineage | PGD-50-10 lineage-exact | "
             "AutoAttack (first 1000) | CO flag (epoch) | probe PGD best (epoch) -> last |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in lease["runs"]:
        lin, exact, aa = (r.get(k) for k in ("pgd_lineage", "pgd_lineage_exact",
                                             "autoattack_1000"))
        g = (lambda e, k: pct(e.get(k)) if isinstance(e, dict) else "not run")
        co = r.get("co_so_far", "n/a") if r.get("co") is None else \
            (f"yes ({r['co_epoch']})" if r["co"] else "no")
        probe = "n/a" if r.get("probe_pgd_best") is None else \
            (f"{pct(r['probe_pgd_best'])} ({r['probe_pgd_best_epoch']}) -> "
             f"{pct(r['probe_pgd_last'])}")
        lines.append(f"| {r['run']} | {r['state']} | {r.get('epochs_done', 0)} | "
                     f"{g(lin, 'clean')} | {g(lin, 'pgd')} | {g(exact, 'pgd')} | "
                     f"{g(aa, 'autoattack')} | {co} | {probe} |")
    perf = [("step", r) for r in lease.get("step", {}).get("step_matrix", [])] + \
        [("graphs", r) for r in lease.get("graphs", {}).get("step_matrix", [])]
    if perf:
        lines += ["", "| part | precision | step | images/s (one run) | first loss vs eager "
                  "fp32 of the same part | graphs torch.compile skipped |",
                  "|---|---|---|---|---|---|"]
        for where, r in perf:
            lines.append(f"| {where} | {r['precision']} | {r['step']} | "
                         f"{r.get('images_per_s', r.get('error', 'n/a'))} | "
                         f"{r.get('first_loss_vs_eager_fp32', 'n/a')} | "
                         f"{r.get('cudagraph_skips', '-')} |")
    pk = lease.get("packing", {}).get("packing", [])
    if pk:
        lines += ["", "| K runs at once | images/s in all | per run | vs K=1 |",
                  "|---|---|---|---|"]
        for r in pk:
            lines.append(f"| {r['k']} | {r.get('aggregate_images_per_s', r.get('error'))} | "
                         f"{r.get('per_run_images_per_s', 'n/a')} | {r.get('vs_k1', 'n/a')} |")
    lines += ["", "Parts: " + ", ".join(f"{k} {v}" for k, v in lease["timing"].items())]
    return "\n".join(lines) + "\n"


def copy_small(runs, runs_dir: str, out: str) -> None:
    """Each run's small files (no checkpoints, no weights) under $OUT/runs/<run>/."""
    for r in runs:
        src = os.path.join(runs_dir, r.name)
        if not os.path.isdir(src):
            continue
        dst = os.path.join(out, "runs", r.name)
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(src):
            if f.endswith((".json", ".jsonl", ".log", ".png", ".md")):
                shutil.copy2(os.path.join(src, f), dst)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the CPU rehearsal (minutes)")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-lease-out",
                   help="where the small results go (default $OUT)")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "gpu-lease"),
                   help="the runs, data and checkpoints (kept by a warm machine)")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "cifar10-jpeg.npz"),
                   help="the pack of benchmarks/gpu_data.py")
    p.add_argument("--budget-s", type=float, default=530.0)
    p.add_argument("--phases", default=",".join(PHASES), help="comma list from " +
                   ", ".join(PHASES))
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_worker:
        return train_worker(args.train_worker, args.work)
    phases = [x for x in args.phases.split(",") if x]
    bad = [x for x in phases if x not in PHASES]
    if bad:
        p.error(f"--phases {','.join(bad)}: valid: {', '.join(PHASES)}")
    clock = Clock(args.budget_s)
    s = settings(args.tiny)
    out, work = os.path.abspath(args.out), os.path.abspath(args.work)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    lease: dict = {"tiny": args.tiny, "budget_s": args.budget_s, "timing": {}}
    lease["device"] = device_facts()
    print(f"gpu_lease: {lease['device']['device']}, budget {args.budget_s:.0f} s", flush=True)

    def part(name, fn):
        t = time.time()
        try:
            result = fn()
        except Exception as e:       # noqa: BLE001 - recorded; the other parts still run
            result = {"error": f"{type(e).__name__}: {e}"}
        lease["timing"][name] = f"{time.time() - t:.0f} s"
        print(f"[{clock.elapsed():6.1f} s] {name}: "
              f"{json.dumps(result)[:300] if isinstance(result, dict) else result}", flush=True)
        return result

    data = part("data", lambda: prepare_data(args.data, work)) if "data" in phases else {}
    lease["data"] = data
    zip_path = data.get("zip") or os.path.join(work, "data", "cifar10-jpeg.zip")
    if "step" in phases:
        lease["step"] = part("step", lambda: bench(
            [*s["bench"], "--step-matrix", "eager"], os.path.join(out, "perf_step.json"),
            min(120, clock.left()), os.path.join(logs, "perf_step.log")))
    # the choice is kept beside the runs: a later call without the step part trains (and
    # resumes) with the precision the first call picked
    chosen = os.path.join(work, "precision.json")
    if "step" in phases or not os.path.exists(chosen):
        lease["precision"] = pick_precision(lease.get("step", {}))
        os.makedirs(work, exist_ok=True)
        with open(chosen, "w") as f:
            json.dump(lease["precision"], f)
    else:
        lease["precision"] = json.load(open(chosen))
    runs = suite_runs(zip_path, lease["precision"]["precision"], args.tiny)
    runs_dir = os.path.join(work, "runs")
    if "train" in phases:
        reserve = 130 if "packing" in phases else 0
        lease["train"] = part("train", lambda: train(
            runs, runs_dir, clock.left(RESERVE_S + reserve), os.path.join(logs, "train.log")))
    if "packing" in phases:
        lease["packing"] = part("packing", lambda: bench(
            [*s["bench"], "--packing", s["packing"], "--precision",
             lease["precision"]["precision"]], os.path.join(out, "perf_packing.json"),
            min(150, clock.left()), os.path.join(logs, "perf_packing.log")))
    if "eval" in phases:
        lease["eval"] = part("eval", lambda: evaluate(runs, runs_dir, s["device"], args.tiny,
                                                      clock, logs))
    if "graphs" in phases:
        lease["graphs"] = part("graphs", lambda: bench(
            [*s["bench"], "--step-matrix", "graphs"], os.path.join(out, "perf_graphs.json"),
            min(240, clock.left()), os.path.join(logs, "perf_graphs.log")))
    lease["runs"] = [result_row(r, runs_dir) for r in runs]
    copy_small(runs, runs_dir, out)
    dirs = [os.path.join(runs_dir, r.name) for r in runs
            if os.path.exists(os.path.join(runs_dir, r.name, "results.json"))]
    if dirs:
        from aaer.reporting.report import write_report
        part("report", lambda: write_report(dirs, os.path.join(out, "report")) and "written")
    lease["elapsed_s"] = clock.elapsed()
    with open(os.path.join(out, "lease.json"), "w") as f:
        json.dump(lease, f, indent=1, default=str)
    with open(os.path.join(out, "lease.md"), "w") as f:
        f.write(markdown(lease))
    print(markdown(lease))
    print(f"gpu_lease: done in {clock.elapsed():.0f} s; {out}/lease.json, lease.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
