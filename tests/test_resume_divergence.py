"""The divergence guard (--on-nan): `stop` ends the run at the first non-finite loss and
keeps the last good checkpoint (exit code 3 from the CLI); `skip-batch` skips exactly the
bad steps, leaving weights and BatchNorm statistics as they were before them."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from aaer.errors import EXIT_DIVERGED, TrainingDiverged
from aaer.runs import read_checkpoint
from aaer.cli import main
from aaer.methods import METHODS, RSFGSM
from aaer.engine import close_logger
from aaer.training import build_trainer, train
from tests.helpers.files import write_cifar10
from tests.helpers.tiny import assert_same_weights, read_rows, tiny_config, tiny_dataset


def nan_method(monkeypatch, bad_loss=(), bad_grad=()):
    """Register 'nan-at': RS-FGSM whose loss is NaN at the (epoch, step) in bad_loss, or
    whose loss is finite but has a NaN gradient at those in bad_grad. It records each step
    and the model's state at the start of each step."""

    class NanAt(RSFGSM):
        name = "nan-at"
        calls: list = []
        states: dict = {}

        def step(self, model, x, y, ctx):
            key = (ctx.epoch, ctx.iteration)
            NanAt.calls.append(key)
            NanAt.states[key] = {k: v.clone() for k, v in model.state_dict().items()}
            out = super().step(model, x, y, ctx)
            if key in bad_loss:
                out.loss = out.loss * float("nan")
            if key in bad_grad:      # value 0, gradient 0 * inf = NaN
                w = sum(p.sum() for p in model.parameters())
                out.loss = out.loss + torch.sqrt(0 * w)
            return out

    monkeypatch.setitem(METHODS, "nan-at", NanAt)
    return NanAt


def cfg(out, **kw):
    return tiny_config(out, method="nan-at", method_hparams={}, **kw)


def test_stop_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ds = tiny_dataset()
    # the same run without a NaN, checkpointed after epoch 0
    nan_method(monkeypatch)
    clean = build_trainer(cfg(tmp_path / "clean"), ds)
    clean.start()
    clean.run_epoch(0)
    close_logger(clean.log)
    good = read_checkpoint(str(tmp_path / "clean" / "checkpoint.pt"))

    nan_method(monkeypatch, bad_loss={(1, 2)})
    with pytest.raises(TrainingDiverged) as e:
        train(cfg(tmp_path / "run"), ds)
    msg = str(e.value)
    assert "loss became nan at epoch 1, step 2" in msg
    assert "checkpoint.pt holds the last good state (end of epoch 0)" in msg
    assert "--lr-max" in msg and "--on-nan skip-batch" in msg
    ckpt = read_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert ckpt["epoch"] == 0 and ckpt["partial"] is None
    assert_same_weights(ckpt["model"], good["model"])
    assert len(read_rows(tmp_path / "run" / "metrics.jsonl")) == 1
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "results.json").exists()
    assert "training diverged" in (tmp_path / "run" / "train.log").read_text()


def test_stop_checks_every_n_steps_not_only_at_epoch_end(tmp_path, monkeypatch):
    m = nan_method(monkeypatch, bad_loss={(0, 1)})
    t = build_trainer(cfg(tmp_path / "run", epochs=1), tiny_dataset())
    t.guard.check_every = 2
    t.start()
    end = t.run_epoch(0)
    assert end.kind == "diverged" and isinstance(end.error, TrainingDiverged)
    assert "epoch 0, step 1" in str(end.error)
    close_logger(t.log)
    assert m.calls == [(0, 0), (0, 1)]       # stopped at the check after step 1 of 5
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skip_batch_skips_exactly_the_bad_step(tmp_path, monkeypatch, kind):
    bad = {(0, 2)}
    m = nan_method(monkeypatch, **{f"bad_{kind}": bad})
    results = train(cfg(tmp_path / "run", epochs=1, on_nan="skip-batch"), tiny_dataset())
    before, after = m.states[(0, 2)], m.states[(0, 3)]
    assert_same_weights(before, after)       # weights, BN running stats and counters
    assert m.calls == [(0, i) for i in range(5)]
    row = results["final_epoch"]
    assert row["skipped_steps"] == 1 and row["n"] == 32 and np.isfinite(row["train_loss"])
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_skip_batch_without_nan_changes_nothing(tmp_path, monkeypatch):
    nan_method(monkeypatch)
    ds = tiny_dataset()
    train(cfg(tmp_path / "stop", epochs=1), ds)
    r = train(cfg(tmp_path / "skip", epochs=1, on_nan="skip-batch"), ds)
    assert r["final_epoch"]["skipped_steps"] == 0
    assert_same_weights(torch.load(tmp_path / "stop" / "model.pt", weights_only=True),
                        torch.load(tmp_path / "skip" / "model.pt", weights_only=True))


def test_cli_real_divergence_exits_3_and_keeps_checkpoint(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"), np.random.default_rng(0), per_batch=8, n_test=4)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
               "--model", "small-cnn", "--method", "rs-fgsm", "--epochs", "3",
               "--batch-size", "8", "--lr-max", "1e4", "--eval-protocol", "none",
               "--no-progress", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_DIVERGED == 3, err
    assert "training diverged" in err and "Lower --lr-max" in err
    assert not (out / "model.pt").exists() and not (out / "results.json").exists()
    # where it diverges depends on the CPU's float kernels (here: epoch 1, step 4)
    epoch = int(re.search(r"(?:at|in) epoch (\d+)", err).group(1))
    if epoch == 0:
        assert not (out / "checkpoint.pt").exists()
    else:
        ckpt = read_checkpoint(str(out / "checkpoint.pt"))
        assert ckpt["epoch"] == epoch - 1 and ckpt["partial"] is None
        assert f"end of epoch {epoch - 1}" in err
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values()
                   if v.is_floating_point())
        assert len(read_rows(out / "metrics.jsonl")) >= epoch
