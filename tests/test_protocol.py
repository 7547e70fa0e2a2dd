"""The FastAT Benchmark's training techniques as settings: the one-cycle schedule (its lr
per epoch equals PyTorch's OneCycleLR stepped once per epoch), the cost of a run (wall
time, device hours, images/s, peak memory in results.json)."""
import json

import pytest
import torch

from aaer.data import Dataset
from aaer.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n_train=32, n_test=8):
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    lab = lambda n: torch.randint(0, 4, (n,), generator=g)
    return Dataset("synthetic", img(n_train), lab(n_train), img(n_test), lab(n_test),
                   ["a", "b", "c", "d"], (0.5,), (0.5,))


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
