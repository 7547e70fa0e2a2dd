"""The FastAT Benchmark's training techniques as settings: the one-cycle schedule (its lr
per epoch equals PyTorch's OneCycleLR stepped once per epoch), the cost of a run (wall
time, device hours, images/s, peak memory in results.json)."""
import json

import pytest
import torch

from aaer.training import TrainConfig, train
from tests.helpers.tiny import tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n_train=32, n_test=8):
    return tiny_dataset(n_train=n_train, n_test=n_test, size=8, classes=4, name="synthetic")


def _cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), dataset="synthetic", model="small-cnn",
                method="rs-fgsm", epsilon=8, epochs=5, batch_size=16, eval_protocol=None,
                progress=False, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_onecycle_steps_once_per_epoch_as_pytorch_does(tmp_path):
    """--lr-schedule onecycle: epoch e trains at the lr PyTorch's OneCycleLR(max_lr, total_steps
    = epochs) gives after e steps, and its momentum cycling replaces SGD's momentum. Rules out
    stepping it per iteration (the lr would move within an epoch and end elsewhere) and a
    schedule built over optimiser steps."""
    res = train(_cfg(tmp_path, "oc", lr_schedule="onecycle", lr_max=0.1), _data())
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=5)
    lrs, moms = [], []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        ref.step()
    assert [r["lr"] for r in _rows(tmp_path / "oc")] == lrs
    assert lrs[0] == pytest.approx(0.1 / 25) and 0.09 < max(lrs) <= 0.1
    cfg = json.loads((tmp_path / "oc" / "config.json").read_text())
    assert cfg["settings"]["optim"]["lr_peak"] == 0.3
    assert cfg["sources"]["optim.lr_peak"] == "onecycle: torch's pct_start"
    assert res["final_epoch"]["lr"] == lrs[-1]
    assert moms[0] == pytest.approx(0.95)


def test_results_record_the_cost_of_the_run(tmp_path):
    """results.json's cost: the training seconds, device hours (seconds x processes / 3600),
    images per second over the epochs' training time, and the peak memory with how it was
    measured."""
    res = train(_cfg(tmp_path, "c", epochs=2), _data())
    cost = json.loads((tmp_path / "c" / "results.json").read_text())["cost"]
    assert cost == res["cost"]
    assert cost["device_hours"] == pytest.approx(cost["train_seconds"] / 3600, abs=1e-6)
    rows = _rows(tmp_path / "c")
    assert cost["images_per_s"] == pytest.approx(
        sum(r["n"] for r in rows) / sum(r["seconds"] for r in rows), rel=0.01)
    assert cost["peak_memory_gb"] > 0 and cost["memory"] == "peak resident set (CPU)"
    assert cost["devices"] == 1 and cost["device"] == "cpu"


def test_validation_images_are_never_in_a_training_batch(tmp_path):
    """--val-n 8 of 40 images: the validation set is the last 8 training images (the
    benchmark's split), no training batch ever holds one (every step's training-set indices
    are below 32), and every epoch's row holds the validation numbers."""
    from aaer.training import build_trainer
    ds = _data(n_train=40)
    t = build_trainer(_cfg(tmp_path, "v", epochs=2, val_n=8), ds)
    seen = []
    orig = t.train_step

    def train_step(x, y, ctx):
        seen.append(ctx.index.clone())
        return orig(x, y, ctx)
    t.train_step = train_step
    res = t.fit()
    index = torch.cat(seen)
    assert index.max() < 32 and sorted(index.tolist()) == sorted(list(range(32)) * 2)
    assert torch.equal(t.validator.x, ds.train_x[32:]) and torch.equal(t.validator.y,
                                                                        ds.train_y[32:])
    assert t.train_x.shape[0] == 32
    rows = _rows(tmp_path / "v")
    assert all({"val_clean_acc", "val_fgsm_acc", "val_pgd_acc"} <= set(r) for r in rows)
    assert res["validation"]["n"] == 8 and "evaluation_selected" not in res   # eval: none


def _scripted_validation(monkeypatch, values):
    """Each validation measure returns the next (clean, pgd) of ``values``."""
    from aaer.selection import Validator
    calls = []

    def measure(self, model):
        clean, pgd = values[len(calls)]
        calls.append(model)
        return {"clean": clean, "fgsm": 0.5, "pgd": pgd}
    monkeypatch.setattr(Validator, "measure", measure)
    return calls


def test_best_val_pgd_selects_as_the_benchmark_does(tmp_path, monkeypatch):
    """With weight averaging, each epoch's candidate is the last weights when their
    validation PGD accuracy is at least the averaged model's, else the averaged model; it is
    selected when its PGD accuracy beats the best so far, or ties it with a higher clean
    accuracy. Script (last, averaged) per epoch: e0 (0.3, 0.1) -> last 0.3 selected; e1
    (0.2, 0.4) -> averaged 0.4 selected; e2 (0.4, 0.4) -> last (tie goes to last) 0.4 with
    clean 0.6 > 0.5 selected; e3 (0.1, 0.4 at clean 0.6) -> averaged, not better. The
    selected weights are epoch 2's last weights, saved as model_selected.pt, and both models
    are evaluated. Rules out preferring the averaged model on ties, selecting on clean
    accuracy, and keeping the last epoch."""
    from aaer.training import build_trainer
    _scripted_validation(monkeypatch, [(0.5, 0.3), (0.5, 0.1), (0.5, 0.2), (0.5, 0.4),
                                       (0.6, 0.4), (0.5, 0.4), (0.5, 0.1), (0.6, 0.4)])
    t = build_trainer(_cfg(tmp_path, "s", epochs=4, val_n=8, weight_average=0.5,
                           eval_protocol="quick", n_eval=4), _data(n_train=40))
    weights = []
    run_epoch = t.run_epoch

    def spy(epoch):
        end = run_epoch(epoch)
        weights.append({k: v.clone() for k, v in t.model.net.state_dict().items()})
        return end
    t.run_epoch = spy
    res = t.fit()
    sel = res["validation"]["selected"]
    assert (sel["epoch"], sel["model"], sel["pgd"], sel["clean"]) == (2, "last", 0.4, 0.6)
    assert [r["val_selected"] for r in _rows(tmp_path / "s")] == [True, True, True, False]
    saved = torch.load(tmp_path / "s" / "model_selected.pt", weights_only=True)
    assert all(torch.equal(saved[k], weights[2][k]) for k in saved)
    assert res["evaluation"]["n"] == res["evaluation_selected"]["n"] == 4
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["settings"]["evaluation"]["select"] == "best-val-pgd"
    assert cfg["sources"]["evaluation.select"] == "--val-n is on"


def test_resume_mid_epoch_is_bitwise_with_every_technique_on(tmp_path):
    """One-cycle schedule, label smoothing, weight averaging and a validation split with
    best-val-pgd selection, all on: a run stopped by SIGTERM inside its second epoch and
    resumed ends with the uninterrupted run's weights, averaged model, validator state
    (selected weights included), schedule and metrics."""
    import signal

    from aaer.errors import TrainingInterrupted
    from aaer.runs import read_checkpoint
    from aaer.training import build_trainer, resume
    from tests.helpers.tiny import read_rows, same_state, signal_at
    ds = _data(n_train=40)
    cfg = lambda name: _cfg(tmp_path, name, epochs=3, lr_schedule="onecycle", lr_max=0.1,
                            label_smoothing=0.4, weight_average=0.9, val_n=8)
    train(cfg("ref"), ds)
    cut = build_trainer(cfg("cut"), ds)
    signal_at(cut, 1, 0, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    assert read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["partial"] is not None
    resume(str(tmp_path / "cut"), dataset=ds)
    a = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))
    b = read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    for part in ("model", "optimizer", "scheduler", "averaged"):
        assert same_state(a[part], b[part]), part
    assert same_state(a["validator"]["best"], b["validator"]["best"])
    untimed = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert untimed(a["validator"]["history"]) == untimed(b["validator"]["history"])
    times = ("seconds", "images_per_s", "data_wait_share", "val_seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in times} for r in rows]
    assert strip(read_rows(tmp_path / "ref" / "metrics.jsonl")) == \
        strip(read_rows(tmp_path / "cut" / "metrics.jsonl"))
