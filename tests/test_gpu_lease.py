"""benchmarks/gpu_lease.sh --tiny: the GPU lease rehearsed end to end on the CPU, on a small
JPEG image folder packed as the real one is: the five runs packed at once, their three
evaluations, the step and packing measurements, the precision rule, and the files under
$OUT that the lease brings back."""
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                      name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def small_cifar_pack(tmp_path):
    """A 10-class JPEG image folder (q75, 32x32) in a zip, packed by gpu_data.py."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.zip"
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", 26), ("test", 8)):
            for c in CLASSES:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        buf, format="JPEG", quality=75)
                    z.writestr(f"small/{split}/{c}/{i:04d}.jpg", buf.getvalue())
    load("gpu_data").pack(str(path), str(tmp_path / "small.npz"))
    return tmp_path / "small.npz"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_lease_rehearses_end_to_end_on_the_cpu(tmp_path):
    pack = small_cifar_pack(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_lease.sh"), "--tiny",
                           "--data", str(pack), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=560, cwd=ROOT,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                               "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lease = json.loads((out / "lease.json").read_text())
    assert lease["tiny"] and lease["data"]["train"] == [260, 3, 32, 32]
    assert lease["data"]["classes"] == list(CLASSES)
    assert lease["train"]["packed"] == 5 and lease["train"]["peak"] == 5      # all at once
    assert lease["train"]["ok"] == 5 and not lease["train"]["stopped_at_deadline"]
    precision = lease["precision"]["precision"]
    assert precision in ("fp32", "bf16") and "bf16_speedup" in lease["precision"]
    assert [r["run"] for r in lease["runs"]] == ["RS-FGSM_16", "RS-AAER_16", "N-AAER_16",
                                                 "RS-AAER_8", "N-FGSM_16"]
    for r in lease["runs"]:
        assert r["state"] == "finished" and r["co"] in (True, False)
        assert r["precision"] == precision and r["probe_pgd_best"] is not None
        assert r["pgd_lineage"]["n"] == 64 and 0 <= r["pgd_lineage"]["pgd"] <= 1
        assert r["pgd_lineage_exact"]["n"] == 64
        assert r["autoattack_1000"]["n"] == 32 and 0 <= r["autoattack_1000"]["autoattack"] <= 1
        cfg = json.loads((out / "runs" / r["run"] / "config.json").read_text())
        assert cfg["settings"]["runtime"]["precision"] == precision
        assert cfg["settings"]["monitor"]["probe_n"] == 64
        assert cfg["model_input"]["mean"] == [0.4914, 0.4822, 0.4465]   # the recipe's
        for f in ("metrics.jsonl", "results.json", "train.log", "eval_pgd_lineage.json"):
            assert (out / "runs" / r["run"] / f).exists(), f
        assert not (out / "runs" / r["run"] / "checkpoint.pt").exists()   # small files only
    aaer16 = json.loads((out / "runs" / "RS-AAER_16" / "config.json").read_text())
    assert (aaer16["settings"]["method"]["lamda2"], aaer16["settings"]["method"]["lamda3"]) \
        == (7.0, 3.25)                                  # the published CIFAR-10 eps 16 row
    assert [r["k"] for r in lease["packing"]["packing"]] == [1, 2]
    steps = {(r["precision"], r["step"]) for r in lease["step"]["step_matrix"]}
    assert steps == {("fp32", "eager"), ("bf16", "eager")}
    graphs = [r for r in lease["graphs"]["step_matrix"] if r["step"] == "graphs"]
    assert len(graphs) == 2 and all("needs a CUDA device" in r["error"] for r in graphs)
    for f in ("perf_step.json", "perf_packing.json", "perf_graphs.json", "lease.md",
              "report/aae_count.png", "report/probe_accuracy.png"):
        assert (out / f).exists() and (out / f).stat().st_size > 0, f
    md = (out / "lease.md").read_text()
    assert "--tiny rehearsal" in md and "| RS-FGSM_16 | finished | 1 |" in md


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_stops_at_its_deadline_and_a_second_call_resumes_it(tmp_path):
    """The budget's deadline stops the packed runs with SIGTERM (each writes its
    checkpoint); a second call with --phases train resumes them to their end, with the
    precision the first call recorded."""
    pack = small_cifar_pack(tmp_path)

    def call(out, *extra, **env):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_lease.py"),
                               "--tiny", "--data", str(pack), "--work", str(tmp_path / "work"),
                               "--out", str(out), *extra], capture_output=True, text=True,
                              timeout=400, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT,
                                                          "OMP_NUM_THREADS": "1", **env})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((out / "lease.json").read_text())

    # 4 steps of 10 s a run: the deadline (52 s - data - 20 s kept) falls inside training
    first = call(tmp_path / "o1", "--phases", "data,train", "--budget-s", "52",
                 AAER_STEP_DELAY="10")
    assert first["train"]["stopped_at_deadline"] is True
    assert first["elapsed_s"] < 52 + 60                       # + the checkpoints' grace
    assert all(r["state"] != "finished" for r in first["runs"])
    second = call(tmp_path / "o2", "--phases", "train", "--budget-s", "300")
    assert second["train"]["ok"] == 5 and not second["train"]["stopped_at_deadline"]
    assert second["precision"] == first["precision"]
    assert all(r["state"] == "finished" for r in second["runs"])
    logs = [(tmp_path / "work" / "runs" / r["run"] / "train.log").read_text()
            for r in second["runs"]]
    interrupted = [log for log in logs if "received SIGTERM: checkpoint written" in log]
    assert interrupted and all("resumed from" in log for log in interrupted)
