"""The performance benchmarks run (tiny settings, CPU) and print what they promise.

No timing is asserted here: on a shared machine only the benchmarks' side-by-side ratios
mean anything. What is asserted: the reference loop and aaer's step agree, every GPU-bench
configuration runs, and each script's last line is its `name: value` headline.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(name, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_bench_train_step_agrees_with_the_reference_loop():
    out = run_bench("bench_train_step.py", "--model", "small-cnn", "--batch-size", "8",
                    "--repeats", "2")
    losses = [re.findall(r"loss (\d+\.\d+)", line) for line in out if line.startswith("step ")]
    assert len(losses) == 2
    assert all(abs(float(ref) - float(ours)) <= 1e-5 for ref, ours in losses)
    assert re.fullmatch(r"train_step_speedup: \d+\.\d{3}", out[-1])


def test_bench_aaer_overhead_prints_its_ratio():
    out = run_bench("bench_aaer_overhead.py", "--model", "small-cnn", "--batch-size", "8",
                    "--repeats", "2")
    assert any(line.startswith("regulariser alone") for line in out)
    assert re.fullmatch(r"aaer_overhead: \d+\.\d{3}", out[-1])


def test_bench_gpu_runs_every_configuration_on_cpu():
    out = run_bench("bench_gpu.py", "--device", "cpu", "--tiny", "--steps", "2")
    table = out[out.index(next(l for l in out if l.startswith("configuration "))) + 1:]
    rows = [l for l in table if l.startswith(("reference loop", "aaer step"))]
    assert len(rows) == 8
    for row in rows:
        ips = float(row.split()[-2])
        assert ips > 0, row
    assert "failed" not in "\n".join(out)
    assert re.fullmatch(r"gpu_bench_speedup: \d+\.\d{2}", out[-1])


def test_bench_gpu_without_cuda_says_so():
    import torch
    if torch.cuda.is_available():
        out = run_bench("bench_gpu.py", "--device", "cpu", "--tiny", "--steps", "1")
        assert out[-1].startswith("gpu_bench_speedup: ")
    else:
        out = run_bench("bench_gpu.py")
        assert out[-1] == "gpu_bench: skipped (no CUDA)" and "not available" in out[0]


def test_bench_gpu_packing_and_step_matrix_on_cpu(tmp_path):
    """--packing: K worker processes time their steps after a common start; --step-matrix:
    eager rows measured, CUDA-graph rows refused on the CPU (recorded, not hidden)."""
    import json
    out = run_bench("bench_gpu.py", "--device", "cpu", "--tiny", "--steps", "2",
                    "--packing", "1,2", "--step-matrix", "--json", str(tmp_path / "b.json"))
    res = json.loads((tmp_path / "b.json").read_text())
    assert [r["k"] for r in res["packing"]] == [1, 2]
    for r in res["packing"]:
        assert r["aggregate_images_per_s"] > 0 and r["seconds"] > 0
        # both are rounded to 0.1 from the same unrounded rate: they agree to one rounding step
        assert abs(r["per_run_images_per_s"] - r["aggregate_images_per_s"] / r["k"]) <= 0.1
    assert res["packing"][0]["vs_k1"] == 1.0
    rows = {(r["precision"], r["step"]): r for r in res["step_matrix"]}
    assert set(rows) == {(p, s) for p in ("fp32", "bf16") for s in ("eager", "graphs")}
    for p in ("fp32", "bf16"):
        assert rows[(p, "eager")]["images_per_s"] > 0
        assert "needs a CUDA device" in rows[(p, "graphs")]["error"]
    # bf16's first loss is near fp32's (same weights, batch and noise), not equal
    assert 0 < rows[("bf16", "eager")]["first_loss_vs_eager_fp32"] < 0.05
    assert re.fullmatch(r"gpu_packing_gain: \d+\.\d{2} \(K=[12]\)", out[-1])
