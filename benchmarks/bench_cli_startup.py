"""How long `aaer --help`, `aaer <command> --help` and `aaer methods` take, beside a bare
Python start and `import torch`, measured side by side in one run (median of N starts).

    python benchmarks/bench_cli_startup.py [--repeats 7]

The commands answer without importing torch (tests/test_catalog.py checks that); this
shows what that is worth. Last line: ``help_vs_torch_import: <aaer --help / import torch>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "python -c pass": ["-c", "pass"],
    "aaer --help": ["-m", "aaer", "--help"],
    "aaer train --help": ["-m", "aaer", "train", "--help"],
    "aaer methods": ["-m", "aaer", "methods"],
    "import torch": ["-c", "import torch"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": ROOT}
    times = {k: [] for k in CASES}
    for _ in range(a.repeats):                   # interleaved: load affects all alike
        for name, argv in CASES.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL,
                           check=True)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<22} {v:6.3f} s (median of {a.repeats})")
    print(f"help_vs_torch_import: {med['aaer --help'] / med['import torch']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
