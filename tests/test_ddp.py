"""DistributedDataParallel: 2 gloo CPU processes train exactly like 1 process on the same
global batch, and only rank 0 writes.

The model has no BatchNorm: BN normalises each rank's share with that share's statistics
(per-GPU BN, as in standard DDP), which would make the two runs differ by design. It feeds
sin(30 x) to two convolutions, a curved input map under which many attack steps lower the
loss, so the AAER regulariser (summed over the ranks' global batch) is active. The attack
starts at zero (--delta-init zero) so that no per-rank random noise enters.

The worker (tests/helpers/ddp.py) registers the test model and calls the CLI, under
torchrun or alone.
"""
import json
import sys

import numpy as np
import pytest
import torch

from tests.helpers.ddp import (BLOW_UP_ENV, EXIT_BOUND, MODEL, PROBES_ENV, SCRIPT, SinCNN,
                               metrics as _metrics, run as _run)
from tests.helpers.files import write_cifar10

@pytest.mark.slow
@pytest.mark.timeout(4 * EXIT_BOUND)
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=16, n_test=4)   # 80 images
    flags = ["--dataset", "cifar10", "--data-dir", str(data), "--model", MODEL,
             "--method", "rs-aaer", "--delta-init", "zero", "--lamda2", "2.5",
             "--lamda3", "1.5", "--epochs", "2", "--batch-size", "16", "--lr-max", "0.05",
             "--eval-protocol", "quick", "--eval-batch-size", "2", "--no-progress",
             "--device", "cpu"]
    script = SCRIPT
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, script, "worker", *flags, "--out-dir", str(one)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
          "2", script, "worker", *flags, "--out-dir", str(two)], tmp_path)

    cfg = json.loads((two / "config.json").read_text())["performance"]
    assert (cfg["world_size"], cfg["backend"], cfg["batch_per_process"]) == (2, "gloo", 8)
    assert json.loads((one / "config.json").read_text())["performance"]["world_size"] == 1

    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == [0, 1]           # rank 0 alone wrote, once per epoch
    assert (two / "train.log").read_text().count("Total train time") == 1
    assert (two / "results.json").is_file() and (two / "model.pt").is_file()
    # the regulariser was active, so its cross-rank sums are part of what is compared
    assert all(0 < r["aae_count"] < r["n"] for r in m1) and m1[-1]["aaer_reg"] > 0
    for a, b in zip(m1, m2):
        assert b["n"] == a["n"] == 80
        assert b["aae_count"] == a["aae_count"]
        assert b["train_acc"] == a["train_acc"]
        for k in ("train_loss", "aaer_reg", "aaer_ce_var", "aaer_var_gap", "aae_logit_var"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k

    # the final evaluation was sharded over the 2 processes and equals a 1-process
    # evaluation of the model rank 0 saved
    ev = json.loads((two / "results.json").read_text())["evaluation"]
    assert ev["processes"] == 2 and ev["n"] == 4
    _run([sys.executable, script, "eval", "--checkpoint", str(two), "--protocol", "quick",
          "--batch-size", "2", "--out", str(tmp_path / "again.json")], tmp_path)
    again = json.loads((tmp_path / "again.json").read_text())
    untimed = lambda res: {a: {k: v for k, v in r.items() if k != "seconds"}
                           for a, r in res.items()}
    assert again["verdicts"] == ev["verdicts"]
    assert untimed(again["results"]) == untimed(ev["results"])

    w1 = torch.load(one / "model.pt", weights_only=True)
    w2 = torch.load(two / "model.pt", weights_only=True)
    assert list(w1) == list(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), k
    # training moved the weights (from the seed-0 initialisation both runs start at)
    torch.manual_seed(0)
    init = SinCNN(10, 3).state_dict()
    assert max((w1[k] - init[k]).abs().max().item() for k in w1) > 1e-3


ROLLBACK_FLAGS = ["--dataset", "cifar10", "--model", MODEL, "--method", "rs-aaer",
                  "--delta-init", "zero", "--lamda2", "2.5", "--lamda3", "1.5",
                  "--batch-size", "16", "--lr-max", "0.05", "--eval-protocol", "none",
                  "--no-progress", "--device", "cpu", "--probe-n", "4", "--on-co", "rollback"]
# best at epoch 1, CO confirmed at epoch 3 (patience 2): back to epoch 1; healthy after
PROBES = "0.25,0.5,0.125,0.125,0.5,0.5,0.5,0.5;0.25,0.375,0.5,0.5,0.5,0.5,0.5,0.5"


@pytest.mark.slow
@pytest.mark.timeout(4 * EXIT_BOUND)
def test_rollback_under_two_gloo_processes_matches_one_process(tmp_path):
    """--on-co rollback under DDP: both processes decide the same rollback at the same probe,
    go back to the same point with each its own RNG state, and the run ends rescued with the
    metrics and weights of the 1-process run; rewind.pt keeps both processes' RNG states."""
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=16, n_test=4)
    flags = [*ROLLBACK_FLAGS, "--data-dir", str(data), "--epochs", "5"]
    script = SCRIPT
    env = {PROBES_ENV: PROBES}
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, script, "worker", *flags, "--out-dir", str(one)], tmp_path, env)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
          "2", script, "worker", *flags, "--out-dir", str(two)], tmp_path, env)
    r1 = json.loads((one / "results.json").read_text())["monitor"]
    r2 = json.loads((two / "results.json").read_text())["monitor"]
    assert r2["outcome_kind"] == r1["outcome_kind"] == "rescued"
    assert [rb["restored_from"] for rb in r2["rollbacks"]] == \
        [rb["restored_from"] for rb in r1["rollbacks"]] == [{"epoch": 1, "step": 10, "pgd": 0.5}]
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == [r["epoch"] for r in m1] == list(range(5))
    for a, b in zip(m1, m2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    rewind = torch.load(two / "rewind.pt", weights_only=True)
    assert len(rewind["rng_ranks"]) == 2
    w1 = torch.load(one / "model.pt", weights_only=True)
    w2 = torch.load(two / "model.pt", weights_only=True)
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)


@pytest.mark.slow
@pytest.mark.timeout(2 * EXIT_BOUND)
def test_divergence_after_a_rollback_under_two_gloo_processes_stops_with_the_best_probe(
        tmp_path):
    """A divergence after a rollback under DDP: every process sees it (the weights' check is
    agreed over the processes), every process restores the best probe's weights, and the run
    ends with results.json saying it was not rescued (exit 0, no process left waiting)."""
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=16, n_test=4)
    flags = [*ROLLBACK_FLAGS, "--data-dir", str(data), "--epochs", "5"]
    script = SCRIPT
    two = tmp_path / "two"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
          "2", script, "worker", *flags, "--out-dir", str(two)], tmp_path,
         {PROBES_ENV: PROBES, BLOW_UP_ENV: "1"})
    mon = json.loads((two / "results.json").read_text())["monitor"]
    assert mon["outcome_kind"] == "not-rescued" and mon["stopped"]["reason"] == "diverged"
    assert mon["stopped"]["restored_from"] == {"epoch": 1, "step": 10, "pgd": 0.5}
    best = torch.load(two / "best_probe.pt", weights_only=True)["model"]
    final = torch.load(two / "model.pt", weights_only=True)
    assert all(torch.equal(best[k], final[k]) for k in best)
