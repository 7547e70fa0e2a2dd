"""`aaer reproduce --runs-per-gpu K`: K runs share one device at once. Locally each is a
process pinned with CUDA_VISIBLE_DEVICES (on CPU, the cores shared out); on Slurm, one job
per K runs. The tests show K runs training at the same time from the runs' own files."""
import json
import os

import numpy as np
import pytest

from aaer.cli import main
from aaer.experiments import executors as ex
from aaer.experiments import reproduce as rp
from tests.helpers.files import write_idx_set


@pytest.mark.parametrize("value,why", [("0", "must be an integer >= 1"),
                                       ("-3", "must be an integer >= 1"),
                                       ("nan", "not a finite number"),
                                       ("1.5", "not an integer"),
                                       ("two", "not a number")])
def test_a_bad_k_is_refused_naming_it(value, why, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["reproduce", "co-fixture", "--runs-per-gpu", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    shown = repr(value) if value == "two" else value
    assert f"invalid --runs-per-gpu {shown}: {why}" in err and err.count("\n") == 1
    assert not out.exists()


def test_slots_k_per_gpu_and_the_old_jobs_rule():
    assert ex.slot_devices(2, 1, 2) == ["0", "0", "1", "1"]     # every visible GPU, K each
    assert ex.slot_devices(4, 2, 3) == ["0"] * 3 + ["1"] * 3    # --jobs 2: two GPUs
    assert ex.slot_devices(1, 1, 4) == ["0"] * 4
    assert ex.slot_devices(0, 2, 2) == [None] * 4               # CPU: jobs x K processes
    assert ex.slot_devices(4, 1, 1) == ["0"] and ex.slot_devices(4, 3, 1) == ["0", "1", "2"]
    assert ex.slot_devices(2, 5, 1) == ["0", "1"]


def tiny_runs(tmp_path, n):
    data = tmp_path / "fmnist"
    write_idx_set(str(data), np.random.default_rng(0), n_train=96, n_test=16)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({
        "datasets": ["fashion-mnist"], "models": ["small-cnn"],
        "methods": ["rs-fgsm", "rs-aaer", "n-fgsm"][:n], "eps": [32], "epochs": 1,
        "flags": ["--batch-size", "32", "--eval-protocol", "none", "--device", "cpu"]}))
    return rp.build_runs(str(grid), 1, data_dir=str(data))


def training_interval(run_dir):
    """When a run trained, from its own files: config.json is written as training starts,
    results.json when it has ended."""
    return (os.path.getmtime(os.path.join(run_dir, "config.json")),
            os.path.getmtime(os.path.join(run_dir, "results.json")))


def check_packed(out, runs, counts, k):
    assert counts == {"skipped": 0, "ok": len(runs), "failed": 0, "peak": k}
    record = [json.loads(line) for line in open(out / "logs" / ex.LocalExecutor.RECORD)]
    assert sorted(r["run"] for r in record) == sorted(r.name for r in runs)
    assert len({r["pid"] for r in record}) == len(runs)
    spans = [training_interval(out / r.name) for r in runs]
    # every run was training while every other was: the latest start precedes the first end
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    configs = [json.load(open(out / r.name / "config.json")) for r in runs]
    return record, [c["environment"] for c in configs]


@pytest.mark.timeout(180)
def test_k_runs_train_side_by_side_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "_gpu_count", lambda: 0)
    monkeypatch.setenv("AAER_STEP_DELAY", "0.5")          # 3 steps: each run trains >= 1.5 s
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runs = tiny_runs(tmp_path, 2)
    out = tmp_path / "suite"
    counts = ex.LocalExecutor(jobs=1, runs_per_gpu=2).submit(runs, str(out), log=lambda m: None)
    record, envs = check_packed(out, runs, counts, 2)
    threads = max(1, (os.cpu_count() or 1) // 2)          # the cores shared out
    assert all(r["device"] == "cpu" and r["threads"] == threads for r in record)
    assert all(e["threads"] == threads and "cuda_visible_devices" not in e for e in envs)


@pytest.mark.timeout(180)
def test_k_runs_per_gpu_are_pinned_to_it(tmp_path, monkeypatch):
    """Two "GPUs", K = 2, three runs: the first two share GPU 0 at once and the third goes to
    GPU 1 (the runs themselves train on the CPU; what is checked is the pinning each
    process got, from the run's own config.json)."""
    monkeypatch.setattr(ex, "_gpu_count", lambda: 2)
    monkeypatch.setenv("AAER_STEP_DELAY", "0.5")
    runs = tiny_runs(tmp_path, 3)
    out = tmp_path / "suite"
    counts = ex.LocalExecutor(jobs=1, runs_per_gpu=2).submit(runs, str(out), log=lambda m: None)
    record, envs = check_packed(out, runs, counts, 3)
    by_run = {r["run"]: r["device"] for r in record}
    assert [by_run[r.name] for r in runs] == ["cuda:0", "cuda:0", "cuda:1"]
    assert [e["cuda_visible_devices"] for e in envs] == ["0", "0", "1"]


def test_slurm_packs_k_runs_into_one_job():
    """Which runs share a job and what a packed job asks for (the queue itself:
    tests/test_slurm.py, test_runs_per_gpu_packs_k_runs_into_one_job_of_the_queue)."""
    runs = rp.build_runs("co-fixture", seeds=1)[:5]           # 5 runs
    assert [[r.name for r in p] for p in ex.packs(runs, 2)] == \
        [[r.name for r in runs[i:i + 2]] for i in (0, 2, 4)]
    slurm = ex.SlurmExecutor(ex.SlurmSettings(runs_per_gpu=2, cpus_per_run=3, gpus_per_run=1))
    params = slurm.parameters()            # one run's GPU, the CPUs of the K runs
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 6
    one = ex.SlurmExecutor(ex.SlurmSettings(cpus_per_run=3))
    assert one.parameters()["cpus_per_task"] == 3


@pytest.mark.timeout(180)
def test_a_packed_job_trains_its_runs_at_once_and_skips_finished_ones(tmp_path, monkeypatch):
    """What a packed Slurm job runs, called here as submitit would call it on the node."""
    monkeypatch.setenv("AAER_STEP_DELAY", "0.5")
    runs = tiny_runs(tmp_path, 2)
    out = tmp_path / "suite"
    job = ex.PackedJob([ex.TrainJob(r.name, r.argv(str(out)), str(out / r.name), 1)
                        for r in runs])
    assert [r["state"] for r in job()] == ["finished", "finished"]
    spans = [training_interval(out / r.name) for r in runs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    again = ex.PackedJob([t.fresh() for t in job.jobs])
    assert [t.start() for t in again.jobs] == [None, None]     # finished: nothing started


def test_the_flag_reaches_both_executors(tmp_path, monkeypatch, capsys):
    from aaer.cli import build_parser, command_settings, slurm_settings
    from aaer.config.commands import ReproduceCommand
    ns = build_parser().parse_args(["reproduce", "co-fixture", "--runs-per-gpu", "4",
                                    "--executor", "slurm", "--slurm-cpus-per-run", "2"])
    del ns.command
    s = slurm_settings(command_settings(ReproduceCommand, ns))
    assert s.runs_per_gpu == 4 and ex.SlurmExecutor(s).parameters()["cpus_per_task"] == 8
    seen = {}

    def submit(self, runs, out_dir, log=print):
        seen.update(jobs=self.jobs, k=self.runs_per_gpu, runs=len(runs))
        return {"skipped": 0, "ok": len(runs), "failed": 0, "peak": self.runs_per_gpu}
    monkeypatch.setattr(ex.LocalExecutor, "submit", submit)
    assert main(["reproduce", "co-fixture", "--runs-per-gpu", "3", "--jobs", "2",
                 "--methods", "RS-FGSM,RS-AAER", "--seeds", "2", "--out",
                 str(tmp_path / "o")]) == 0
    assert seen == {"jobs": 2, "k": 3, "runs": 4}
