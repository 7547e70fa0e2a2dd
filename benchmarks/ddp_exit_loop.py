"""Repeat 2-process CPU `aaer train` runs under torchrun and report whether each exits.

    python benchmarks/ddp_exit_loop.py --runs 50 --bound 120

Each run trains the DDP test's tiny sin-CNN (tests/helpers/ddp.py) for 2 epochs on a small
CIFAR-10 the script writes, with 2 gloo processes. A run that has not exited BOUND seconds
after it started counts as hung: its process group is killed and the loop goes on. The
last line says how many of the runs exited by themselves and the slowest exit.

``--library`` ends the worker with a plain interpreter exit instead of the CLI's
os._exit under torchrun, so only the trainer's own teardown (aaer.engine.distributed.
shutdown) stands between a finished run and its exit, as for a Python API user.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--bound", type=float, default=120.0, help="seconds before a run is hung")
    p.add_argument("--library", action="store_true", help="no os._exit: the library's teardown")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    import numpy as np

    from tests.helpers.files import write_cifar10
    tmp = tempfile.mkdtemp(prefix="ddp-loop-")
    data = os.path.join(tmp, "data")
    write_cifar10(data, np.random.default_rng(0), per_batch=16, n_test=4)
    script = os.path.join(ROOT, "tests", "helpers", "ddp.py")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    if args.library:
        env["AAER_DDP_LIBRARY_EXIT"] = "1"
    exited, times = 0, []
    for k in range(args.runs):
        out = os.path.join(tmp, f"run{k}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", script, "worker", "--dataset", "cifar10",
               "--data-dir", data, "--model", "test-sin-cnn", "--method", "rs-aaer",
               "--epochs", "2", "--batch-size", "16", "--eval-protocol", "none",
               "--no-progress", "--device", "cpu", "--out-dir", out]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, cwd=tmp, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.bound)
            dt = time.time() - t0
            ok = rc == 0
            exited += ok
            times.append(dt)
            print(f"run {k}: exit {rc} after {dt:.1f} s", flush=True)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"run {k}: HUNG (no exit after {args.bound:.0f} s; results.json "
                  f"{'written' if os.path.exists(os.path.join(out, 'results.json')) else 'missing'})",
                  flush=True)
    slowest = max(times) if times else float("nan")
    print(f"{exited}/{args.runs} runs exited by themselves with code 0; slowest exit "
          f"{slowest:.1f} s (bound {args.bound:.0f} s)")
    return 0 if exited == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
