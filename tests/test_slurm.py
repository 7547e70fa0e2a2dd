"""`aaer reproduce --executor slurm` on a real one-node Slurm (scripts/slurm.sh: Debian's
slurm-wlm with munge, started for this test session, stopped at its end). No mock: if
Slurm cannot be started, the tests fail with what went wrong.

- a tiny suite (2 methods x 2 seeds) goes through the queue as a job array, and its summary
  equals the local executor's (every number but the timings);
- `scancel --signal=TERM` mid-training: the run checkpoints, is requeued, resumes where it
  stopped, and ends with the weights of an uninterrupted run (torch.equal);
- a second call submits nothing for finished runs; --status says where each run stands.
"""
import csv
import json
import os
import subprocess
import time

import numpy as np
import pytest
import torch

from aaer.cli import main
from tests.helpers.files import write_idx_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one cluster (the module's fixture) for the module's tests: under pytest-xdist they share a worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]
SLURM_FLAGS = ["--executor", "slurm", "--slurm-gpus-per-run", "0", "--slurm-cpus-per-run", "1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    t0 = time.time()
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm.sh"), "start", str(d)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"Slurm could not be started (scripts/slurm.sh start): "
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(d / "slurm.conf")
    print(f"slurm started in {time.time() - t0:.1f} s")
    yield d
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm.sh"), "stop", str(d)],
                   timeout=60)
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmnist")
    write_idx_set(str(d), np.random.default_rng(0), n_train=96, n_test=32)
    return d


def suite_file(path, methods, epochs, batch, protocol="quick"):
    path.write_text(json.dumps({
        "datasets": ["fashion-mnist"], "models": ["small-cnn"], "methods": methods,
        "eps": [32], "epochs": epochs,
        "flags": ["--batch-size", str(batch), "--eval-protocol", protocol, "--lr-max", "0.05",
                  "--device", "cpu"]}))
    return path


def numbers(out):
    """summary.csv without the timing columns."""
    rows = list(csv.DictReader(open(out / "summary.csv")))
    return [{k: v for k, v in r.items() if not k.startswith("seconds_per_epoch")} for r in rows]


def table(out):
    """summary.md's per-method table without its s/epoch column."""
    lines = [line.split(" | ") for line in (out / "summary.md").read_text().splitlines()
             if line.startswith("| RS-")]
    return [cells[:6] + cells[7:] for cells in lines]


@pytest.mark.timeout(600)
def test_a_tiny_suite_through_the_queue_equals_the_local_run(slurm, data, tmp_path, capsys):
    suite = suite_file(tmp_path / "grid.json", ["rs-fgsm", "rs-aaer"], 2, 32)
    base = ["reproduce", str(suite), "--seeds", "2", "--data-dir", str(data)]
    # local with one thread a run, as each Slurm job (--slurm-cpus-per-run 1)
    assert main(base + ["--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    t0 = time.time()
    assert main(base + ["--out", str(tmp_path / "slurm")] + SLURM_FLAGS + ["--wait"]) == 0
    out = capsys.readouterr().out
    print(f"tiny suite through Slurm: {time.time() - t0:.1f} s")
    assert "slurm: 4 submitted" in out and "runs: 4 ok, 0 failed" in out
    jobs = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())
    ids = sorted(j["job_id"] for j in jobs.values())
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1    # one job array
    assert numbers(tmp_path / "slurm") == numbers(tmp_path / "local")
    assert table(tmp_path / "slurm") == table(tmp_path / "local")
    for name in jobs:
        a = torch.load(tmp_path / "slurm" / name / "model.pt", weights_only=True)
        b = torch.load(tmp_path / "local" / name / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # again: nothing to submit, the summary is rewritten; --status: every run finished
    assert main(base + ["--out", str(tmp_path / "slurm")] + SLURM_FLAGS) == 0
    out = capsys.readouterr().out
    assert "slurm: 0 submitted, 0 already queued, 4 already finished" in out
    assert "summary:" in out and numbers(tmp_path / "slurm") == numbers(tmp_path / "local")
    assert main(base + ["--out", str(tmp_path / "slurm"), "--status"] + SLURM_FLAGS) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" finished " in line and " job " in line for line in lines)


@pytest.mark.timeout(600)
def test_runs_per_gpu_packs_k_runs_into_one_job_of_the_queue(slurm, data, tmp_path, capsys):
    """--runs-per-gpu 2: two jobs of two runs each, every job asking for the CPUs of its two
    runs; each run trains as it does alone (one thread), so the weights equal the local's."""
    suite = suite_file(tmp_path / "grid.json", ["rs-fgsm", "rs-aaer"], 2, 32)
    base = ["reproduce", str(suite), "--seeds", "2", "--data-dir", str(data)]
    assert main(base + ["--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    assert main(base + ["--out", str(tmp_path / "packed"), "--runs-per-gpu", "2"] +
                SLURM_FLAGS + ["--wait"]) == 0
    out = capsys.readouterr().out
    assert "slurm: 4 submitted" in out and "runs: 4 ok, 0 failed" in out
    jobs = json.loads((tmp_path / "packed" / "slurm" / "jobs.json").read_text())
    by_job = {}
    for name, j in jobs.items():
        by_job.setdefault(j["job_id"], []).append(name)
    assert sorted(len(v) for v in by_job.values()) == [2, 2], by_job
    for job in by_job:                  # the sbatch script submitit wrote for the job
        script = next((tmp_path / "packed" / "slurm").glob(f"{job.split('_')[0]}*/"
                                                            "*submission.sh"))
        assert "#SBATCH --cpus-per-task=2" in script.read_text()
        assert "--gpus-per-node" not in script.read_text()
    assert numbers(tmp_path / "packed") == numbers(tmp_path / "local")
    for name in jobs:
        a = torch.load(tmp_path / "packed" / name / "model.pt", weights_only=True)
        b = torch.load(tmp_path / "local" / name / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def _wait(cond, timeout, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _squeue(job):
    return subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.split()


@pytest.mark.timeout(600)
def test_a_preempted_run_checkpoints_requeues_and_resumes_exactly(slurm, data, tmp_path,
                                                                  capsys, monkeypatch):
    suite = suite_file(tmp_path / "one.json", ["rs-aaer"], 6, 8, protocol="none")
    base = ["reproduce", str(suite), "--data-dir", str(data)]
    assert main(base + ["--out", str(tmp_path / "ref"), "--jobs", "2"]) == 0   # one thread
    monkeypatch.setenv("AAER_STEP_DELAY", "0.15")     # 12 steps of 0.15 s an epoch
    out = tmp_path / "pre"
    assert main(base + ["--out", str(out)] + SLURM_FLAGS) == 0
    name = "fashion-mnist_small-cnn_RS-AAER_32_s0"
    job = json.loads((out / "slurm" / "jobs.json").read_text())[name]["job_id"]
    metrics = out / name / "metrics.jsonl"
    _wait(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 120,
          "two epochs")
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    # checkpointed and requeued: Slurm holds a requeued job for ~2 min; let it start now
    _wait(lambda: _squeue(job) == ["PENDING"], 60, "the requeue")
    ckpt = torch.load(out / name / "checkpoint.pt", weights_only=True)
    assert ckpt["partial"] is not None or ckpt["epoch"] >= 1       # stopped where it was
    # not in the second of the requeue: slurmd refuses a job credential issued in the same
    # second as the revocation of the old one ("Job credential revoked", seen in CI)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
    _wait(lambda: not _squeue(job), 180, "the resumed job to end")
    res = json.loads((out / name / "results.json").read_text())
    assert len(res["resumes"]) == 1 and res["resumes"][0]["epoch"] >= 1
    log = (out / "slurm" / job / f"{job}_0_log.out").read_text()
    err = (out / "slurm" / job / f"{job}_0_log.err").read_text()
    # Slurm's own word for the requeue: submitit's "Requeued job" line can be lost when
    # the requeue's SIGTERM re-enters its handler before the first `scontrol requeue`
    # returns (the job is requeued all the same)
    assert "Caught signal SIGTERM" in log and f"JOB {job} ON" in err and \
        "DUE TO JOB REQUEUE" in err
    a = torch.load(out / name / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / name / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
