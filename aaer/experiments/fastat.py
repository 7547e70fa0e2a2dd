"""The FastAT Benchmark's protocol as aaer suites, and its published numbers beside aaer's.

    aaer reproduce fastat-cifar10 | fastat-cifar100 | fastat-tinyimagenet [--seeds 3]

fzjcdt/FastAT_Benchmark (Pan and Yao, arXiv 2604.22853; files read at commit
``BENCHMARK_COMMIT``; docs/methods/fastat-benchmark.md) trains every method under one
recipe: ``configs/<dataset>/common.yaml`` (model, batch 128, 49000/1000 or 98000/2000
training/validation images, eps 8/255) merged with ``configs/<dataset>/<method>.yaml``
(100 epochs of one-cycle SGD stepped per epoch, lr 0.1, momentum 0.9, weight decay 5e-4,
label smoothing 0.4, weight averaging tau 0.9995, the method's own keys). Each suite here is
one `aaer train` line per method of that list (its config name mapped to aaer's method and
its keys to aaer's settings, per data set), plus aaer's methods the benchmark lacks (LAP,
MultiGrad), each for seeds 0..N-1.

The summary puts the benchmark's published means and standard deviations
(``fastat_published.json``, extracted from its ``benchmark_data.json`` by
``python -m aaer.experiments.fastat extract <benchmark_data.json>``) beside aaer's numbers.
What aaer cannot reproduce of a method's benchmark implementation is said in ``Entry.note``
and printed with the summary.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

from aaer.errors import UsageError
from aaer.io import atomic_write_bytes

BENCHMARK_REPO = "fzjcdt/FastAT_Benchmark"
BENCHMARK_COMMIT = "b99c0de60e57128254234f2d79719b74792a4037"
PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "fastat_published.json")
# the metrics of benchmark_data.json (accuracies in percent, time in seconds, memory in GiB)
METRICS = ("clean_acc", "pgd_10_acc", "pgd_20_acc", "pgd_50_acc", "autoattack_acc",
           "cr_attack_acc", "total_training_time", "max_gpu_memory")


# -- the published numbers ------------------------------------------------------------------

def extract_published(data: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The small file aaer ships from the benchmark's benchmark_data.json: per data set and
    method, the mean and std of every metric and each seed's value, copied unchanged."""
    results: dict[str, Any] = {}
    for ds, methods in data.items():
        results[ds] = {}
        for m, entry in sorted(methods.items()):
            results[ds][m] = {
                "seeds": {s: {k: v[k] for k in METRICS} for s, v in sorted(entry["seeds"].items())},
                **{k: {"mean": entry[k]["mean"], "std": entry[k]["std"]} for k in METRICS}}
    return {"source": source,
            "units": {"clean_acc": "% of the test set", "pgd_10_acc": "%", "pgd_20_acc": "%",
                      "pgd_50_acc": "%", "autoattack_acc": "%", "cr_attack_acc": "%",
                      "total_training_time": "seconds of training (validation excluded)",
                      "max_gpu_memory": "GiB, torch.cuda.max_memory_allocated / 1024**3"},
            "aggregate": "mean and sample standard deviation (statistics.stdev) over the seeds, "
                         "as the benchmark's parse_logs.py computes them",
            "results": results}


def published(path: str = PUBLISHED_FILE) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _extract_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m aaer.experiments.fastat extract",
                                description="write fastat_published.json from the FastAT "
                                "Benchmark's benchmark_data.json")
    p.add_argument("benchmark_data")
    p.add_argument("--commit", default=BENCHMARK_COMMIT)
    p.add_argument("--blob", default=None, help="git blob id of the file at that commit")
    p.add_argument("--out", default=PUBLISHED_FILE)
    a = p.parse_args(argv)
    with open(a.benchmark_data) as f:
        data = json.load(f)
    source = {"repository": BENCHMARK_REPO, "path": "benchmark_data.json",
              "commit": a.commit, "blob": a.blob,
              "generated_by": "python -m aaer.experiments.fastat extract benchmark_data.json"}
    text = json.dumps(extract_published(data, source), indent=1) + "\n"
    atomic_write_bytes(a.out, text.encode())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["extract"]:
        sys.exit("usage: python -m aaer.experiments.fastat extract <benchmark_data.json>")
    sys.exit(_extract_main(sys.argv[2:]))
