"""Exact resume: RNG states, checkpoint files, and runs stopped by real signals and resumed.

In-process tests send a real SIGTERM/SIGINT to this process at a chosen step; the
subprocess tests kill `python -m aaer train` (SIGTERM, SIGINT, SIGKILL) at a seeded random
moment and resume it with `aaer train --resume`. Either way the final weights must be
bitwise equal (torch.equal, every tensor) to a run that was never stopped, and the
metrics lines equal except for their timing.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from aaer.engine.checkpoint import rng_state, set_rng_state
from aaer.errors import TrainingInterrupted
from aaer.runs import CHECKPOINT_FORMAT as FORMAT
from aaer.runs import read_checkpoint, write_checkpoint
from aaer.training import build_trainer, train
from tests.helpers.files import write_cifar10
from tests.helpers.tiny import (assert_same_weights, read_rows, signal_at, tiny_config,
                                tiny_dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TIMES = ("seconds", "images_per_s", "data_wait_share")


def without_time(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


# -- RNG states and checkpoint files -------------------------------------------------------

def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.rand(3)    # move every state off its seed
    saved = rng_state()
    expect = (random.random(), np.random.randn(3).tolist(), torch.rand(4).tolist())
    write_checkpoint(str(tmp_path / "c.pt"), {"rng": saved})
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = read_checkpoint(str(tmp_path / "c.pt"), complete=False)  # weights_only=True
    assert state["format"] == FORMAT
    assert set_rng_state(state["rng"]) == []
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(4).tolist()) == expect
    assert os.listdir(tmp_path) == ["c.pt"]                # no temporary file left


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    write_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})
    before = open(path, "rb").read()
    with pytest.raises(Exception):
        write_checkpoint(path, {"epoch": 1, "bad": lambda: 0})   # cannot be pickled
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert read_checkpoint(path, complete=False)["epoch"] == 0


# -- in-process: a real signal at a chosen step -------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    ds = tiny_dataset()
    train(tiny_config(out), ds)
    return out, ds


@pytest.mark.parametrize("epoch,step,signum", [
    (0, 1, signal.SIGTERM),      # inside the first epoch: config.json must survive
    (1, 3, signal.SIGINT),       # mid-epoch, during the attack's warm-up (step index matters)
    (1, 4, signal.SIGTERM),      # the last step of an epoch: the end-of-epoch checkpoint
])
def test_signal_then_resume_is_bitwise_equal(tmp_path, reference, epoch, step, signum):
    ref_out, ds = reference
    out = tmp_path / "run"
    cfg = tiny_config(out)
    trainer = build_trainer(cfg, ds)
    signal_at(trainer, epoch, step, signum)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.fit()
    assert e.value.signum == signum and e.value.exit_code == 128 + signum
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    config_before = (out / "config.json").read_bytes()
    ckpt = read_checkpoint(str(out / "checkpoint.pt"))
    n_batches = 5
    if step + 1 < n_batches:        # mid-epoch: loader position and partial sums saved
        assert (ckpt["epoch"], ckpt["loader"]["position"]) == (epoch, step + 1)
        assert ckpt["partial"]["n_seen"] == 8 * (step + 1)
    else:                           # end of epoch: the loader is at the next one
        assert ckpt["partial"] is None and ckpt["epoch"] == epoch
        assert (ckpt["loader"]["epoch"], ckpt["loader"]["position"]) == (epoch + 1, 0)
    assert len(ckpt["history"]) == epoch + (step + 1 == n_batches)
    # a line written after the checkpoint (a kill between the two) is dropped on resume
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 99}) + "\n")

    results = train(tiny_config(out), ds, resume=True)
    assert_same_weights(torch.load(out / "model.pt", weights_only=True),
                        torch.load(ref_out / "model.pt", weights_only=True))
    assert without_time(read_rows(out / "metrics.jsonl")) == \
        without_time(read_rows(ref_out / "metrics.jsonl"))
    assert (out / "config.json").read_bytes() == config_before
    resumes = results["resumes"]
    assert len(resumes) == 1 and resumes[0]["epoch"] == (epoch if step + 1 < n_batches
                                                         else epoch + 1)
    assert json.loads((out / "results.json").read_text())["resumes"] == resumes
    assert "resumed from" in (out / "train.log").read_text()


def test_resumed_epoch_matches_state_rng_and_metrics_line(tmp_path, reference):
    """Stopped after step 2 of epoch 0, then epoch 0 finished from the checkpoint: the
    optimiser, schedule, RNG state and the epoch's metrics line equal an uninterrupted
    epoch 0 (except its seconds)."""
    from aaer.engine import close_logger
    _, ds = reference
    a = build_trainer(tiny_config(tmp_path / "a", epochs=2), ds)
    signal_at(a, 0, 2, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        a.fit()
    ref = build_trainer(tiny_config(tmp_path / "r", epochs=2), ds)
    row_ref = ref.run_epoch(0).row
    rng_ref = torch.get_rng_state()
    b = build_trainer(tiny_config(tmp_path / "a", epochs=2), ds, resume=True)
    seconds_before = read_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))["partial"]["seconds"]
    row_b = b.run_epoch(0).row
    assert torch.equal(torch.get_rng_state(), rng_ref)
    assert without_time([row_b]) == without_time([row_ref]) and row_b["n"] == 40
    assert b.sched.state_dict() == ref.sched.state_dict()
    for key in ("lr", "momentum"):
        assert b.opt.param_groups[0][key] == ref.opt.param_groups[0][key]
    for p, q in zip(b.opt.state.values(), ref.opt.state.values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    assert row_b["seconds"] >= seconds_before
    for t in (b, ref):
        close_logger(t.log)


# -- subprocess: kill a real `aaer train` at a random moment ----------------------------

N_EPOCHS, STEP_DELAY = 3, 0.08
RUN_FLAGS = ["--dataset", "cifar10", "--model", "small-cnn", "--method", "rs-aaer",
             "--epochs", str(N_EPOCHS), "--batch-size", "8", "--lr-max", "0.1", "--seed", "7",
             "--eval-protocol", "quick", "--no-progress",
             # AAER_TEST_DEVICE=cuda runs the kill-and-resume tests on a GPU (deterministic
             # algorithms are on; CUBLAS_WORKSPACE_CONFIG is set below)
             "--device", os.environ.get("AAER_TEST_DEVICE", "cpu")]
DETERMINISTIC = ("import sys, torch; torch.use_deterministic_algorithms(True); "
                 "from aaer.cli import main; raise SystemExit(main(sys.argv[1:]))")


def _cmd(*args):
    return [sys.executable, "-c", DETERMINISTIC, "train", *args]


def _env(delay=0.0):
    return {**os.environ, "PYTHONPATH": ROOT, "AAER_STEP_DELAY": str(delay),
            "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A small CIFAR-10 release on disk and an uninterrupted run on it."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(str(root / "data"), np.random.default_rng(0), per_batch=8, n_test=6)
    ref = root / "ref"
    proc = subprocess.run(_cmd(*RUN_FLAGS, "--data-dir", str(root / "data"), "--out-dir",
                               str(ref)), env=_env(), capture_output=True, text=True,
                          timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, ref


def _wait_for(cond, proc, timeout=200):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()}"
        assert time.time() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.02)


def _kill_and_resume(tmp_path, cifar_run, signum, after_epochs, seed):
    root, ref = cifar_run
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(*RUN_FLAGS, "--data-dir", str(root / "data"), "--out-dir",
                                 str(out)), env=_env(STEP_DELAY), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        if after_epochs == 0:   # training has begun once the log header is written
            _wait_for(lambda: "Epoch" in _read(out / "train.log"), proc)
        else:
            _wait_for(lambda: len(_read(out / "metrics.jsonl").splitlines()) >= after_epochs,
                      proc)
        # a random moment within the next epoch (5 steps of >= STEP_DELAY s each)
        time.sleep(random.Random(seed).uniform(0.0, 4 * STEP_DELAY))
        proc.send_signal(signum)
        err = proc.communicate(timeout=200)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    expect_rc = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
    assert proc.returncode == expect_rc, err[-3000:]
    assert not (out / "results.json").exists() and not (out / "model.pt").exists()
    ckpt = read_checkpoint(str(out / "checkpoint.pt"))
    where = (ckpt["epoch"], ckpt["loader"]["position"], ckpt["partial"] is not None)

    again = subprocess.run(_cmd("--resume", str(out), "--no-progress"), env=_env(),
                           capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_weights(torch.load(out / "model.pt", weights_only=True),
                        torch.load(ref / "model.pt", weights_only=True))
    assert without_time(read_rows(out / "metrics.jsonl")) == \
        without_time(read_rows(ref / "metrics.jsonl"))
    got = json.loads((out / "results.json").read_text())
    want = json.loads((ref / "results.json").read_text())
    for attack in ("clean", "fgsm", "pgd"):
        for key in ("acc", "loss"):
            assert got["evaluation"]["results"][attack][key] == \
                want["evaluation"]["results"][attack][key]
    print(f"{signal.Signals(signum).name}: checkpoint at (epoch, position, mid-epoch) = {where}; "
          "resumed run bitwise equal")
    return where


def _read(path):
    try:
        return open(path).read()
    except FileNotFoundError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_mid_run_then_resume_is_bitwise_equal(tmp_path, cifar_run):
    epoch, position, mid = _kill_and_resume(tmp_path, cifar_run, signal.SIGTERM, 1, seed=11)
    assert epoch >= 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigint_in_first_epoch_then_resume_is_bitwise_equal(tmp_path, cifar_run):
    _kill_and_resume(tmp_path, cifar_run, signal.SIGINT, 0, seed=12)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_resumes_from_the_last_epoch_checkpoint(tmp_path, cifar_run):
    epoch, position, mid = _kill_and_resume(tmp_path, cifar_run, signal.SIGKILL, 1, seed=13)
    assert not mid and position == 0      # no chance to write a mid-epoch checkpoint


def test_autoattack_interrupted_in_the_final_evaluation_resumes_from_its_state(tmp_path,
                                                                              monkeypatch):
    """`aaer train` keeps AutoAttack's state in the run directory: a run killed during the
    final evaluation resumes there (no training repeated) and ends with the same numbers."""
    import aaer.attacks.autoattack as aa_mod
    from aaer.training import resume
    data = tiny_dataset(n_test=12)
    kw = dict(method="rs-fgsm", method_hparams={}, epochs=1, eval_protocol="aaer", n_eval=12,
              eval_batch_size=4)
    ref = train(tiny_config(tmp_path / "ref", **kw), data)["evaluation"]["results"]

    run = tmp_path / "run"
    real_save, saves = aa_mod._save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(obj["current"])
        if len(saves) == 2:                      # after two batches of APGD-CE
            raise KeyboardInterrupt
    monkeypatch.setattr(aa_mod, "_save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, **kw), data)
    state_file = run / "autoattack_state_aaer+custom.pt"      # protocol aaer, n_eval 12
    assert state_file.exists() and not (run / "results.json").exists()
    assert torch.load(state_file, weights_only=True)["current"]["batches_done"] >= 1

    left = torch.load(state_file, weights_only=True)
    progress = lambda st: (len(st["done"]), (st["current"] or {}).get("batches_done", 0))
    resumed_saves = []

    def record(obj, path):
        resumed_saves.append(progress(obj))
        real_save(obj, path)
    monkeypatch.setattr(aa_mod, "_save_atomic", record)
    before = len(read_rows(run / "metrics.jsonl"))
    res = resume(str(run), dataset=data)["evaluation"]["results"]
    assert len(read_rows(run / "metrics.jsonl")) == before == 1      # no epoch trained again
    assert res["autoattack"]["acc"] == ref["autoattack"]["acc"]
    assert res["pgd"]["acc"] == ref["pgd"]["acc"] and res["clean"]["acc"] == ref["clean"]["acc"]
    assert not state_file.exists()                                    # removed once complete
    # AutoAttack went on from the saved state: it never saved an earlier point again
    assert resumed_saves and min(resumed_saves) >= progress(left)
