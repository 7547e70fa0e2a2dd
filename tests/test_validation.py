"""Bad settings are refused before any work starts: exit code 2, a message that names the
bad value and says what is valid, and nothing written to the out-dir.

Each case runs `aaer train` / `aaer eval` in-process through aaer.cli.main. Settings that
need no data are refused before the data are even loaded (checked by counting loads).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import aaer.data
from aaer.runs import read_checkpoint, write_checkpoint
from aaer.cli import main
from aaer.models import create_model
from aaer.engine import close_logger
from aaer.training import build_trainer
from tests.helpers.files import snapshot, write_cifar10, write_idx_set


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    write_cifar10(str(root / "cifar"), np.random.default_rng(0), per_batch=8, n_test=6)
    write_cifar10(str(root / "cifar-other"), np.random.default_rng(1), per_batch=8, n_test=6)
    write_idx_set(str(root / "mnist12"), np.random.default_rng(0), n_train=6, n_test=3, size=12)
    corrupt = root / "corrupt"
    write_cifar10(str(corrupt), np.random.default_rng(0), per_batch=8, n_test=6)
    batch = corrupt / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    (root / "a-file").write_text("not a directory")
    # an unfinished run: config.json and the checkpoint after epoch 0 of 2
    from aaer.cli import build_parser, config_from_args
    args = build_parser().parse_args(base_args(root / "cifar", root / "unfinished") +
                                     ["--epochs", "2"])
    cfg = config_from_args(args)
    t = build_trainer(cfg)
    t.start()
    t.run_epoch(0)
    close_logger(t.log)
    torch.save(create_model("small-cnn", 10, 3, 32).state_dict(), root / "small-cnn.pt")
    torch.save(create_model("small-cnn", 100, 3, 32).state_dict(), root / "small-cnn-100.pt")
    return root


def base_args(data, out):
    return ["train", "--dataset", "cifar10", "--data-dir", str(data), "--model", "small-cnn",
            "--method", "rs-aaer", "--epochs", "1", "--batch-size", "8", "--eval-protocol",
            "none", "--no-progress", "--out-dir", str(out)]


def run_cli(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:     # argparse's own refusals (choices, types)
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture
def count_loads(monkeypatch):
    calls = []
    real = aaer.data.load_dataset

    def load(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(aaer.data, "load_dataset", load)
    return calls


# (id, extra flags, strings the message must hold, "static" = refused before loading data)
TRAIN_CASES = [
    ("unknown-dataset", ["--dataset", "imagenet21k"], ["imagenet21k", "cifar10, cifar100"], 1),
    ("unknown-model", ["--model", "resnet9000"], ["resnet9000", "small-cnn", "wrn-"], 1),
    ("unknown-method", ["--method", "pgd-at"], ["pgd-at", "rs-aaer", "n-fgsm"], 1),
    ("eps-zero", ["--epsilon", "0"], ["--epsilon 0.0", "(0, 255]"], 1),
    ("eps-too-big", ["--epsilon", "300"], ["--epsilon 300.0", "(0, 255]"], 1),
    ("alpha-zero", ["--alpha", "0"], ["alpha=0.0", "must be > 0"], 1),
    ("alpha-negative", ["--alpha", "-1.25"], ["alpha=-1.25", "must be > 0"], 1),
    ("lamda1-negative", ["--lamda1", "-1"], ["lamda1=-1.0", "must be >= 0"], 1),
    ("lamda3-negative", ["--lamda3", "-0.5"], ["lamda3=-0.5", "must be >= 0"], 1),
    ("epochs-zero", ["--epochs", "0"], ["--epochs 0", ">= 1"], 1),
    ("batch-size-zero", ["--batch-size", "0"], ["--batch-size 0", ">= 1"], 1),
    ("lr-max-below-min", ["--lr-max", "0.01", "--lr-min", "0.1"],
     ["(0.01, 0.1)", "0 <= lr-min <= lr-max"], 1),
    ("lr-min-negative", ["--lr-min", "-0.1"], ["--lr-min -0.1", ">= 0"], 1),
    ("lr-peak", ["--lr-peak", "1.5"], ["--lr-peak 1.5", "(0, 1)"], 1),
    ("momentum", ["--momentum", "1.0"], ["--momentum 1.0", "[0, 1)"], 1),
    ("weight-decay", ["--weight-decay", "-0.1"], ["--weight-decay -0.1", ">= 0"], 1),
    ("warmup-negative", ["--warmup-epochs", "-1"], ["warmup_epochs", "-1.0", ">= 0"], 1),
    ("set-not-a-number", ["--set", "alpha=abc"], ["alpha='abc'", "not a number"], 1),
    ("set-unknown-key", ["--set", "lamda9=1"], ["lamda9", "valid:", "lamda1"], 1),
    ("seed-negative", ["--seed", "-1"], ["--seed -1", "[0, 4294967295]"], 1),
    ("n-train-zero", ["--n-train", "0"], ["--n-train 0", ">= 1"], 1),
    ("n-eval-zero", ["--n-eval", "0"], ["--n-eval 0", ">= 1"], 1),
    ("probe-n-negative", ["--probe-n", "-3"], ["--probe-n -3", ">= 0"], 1),
    ("probe-steps-zero", ["--probe-steps", "0"], ["--probe-steps 0", ">= 1"], 1),
    ("eval-batch-zero", ["--eval-batch-size", "0"], ["--eval-batch-size 0", ">= 1"], 1),
    ("device", ["--device", "banana"], ["'banana'", "auto, cpu, cuda or cuda:N"], 1),
    ("protocol", ["--eval-protocol", "nonsense"], ["'nonsense'", "lineage", "quick"], 1),
    ("precision", ["--precision", "fp8"], ["fp8", "fp32", "bf16"], 1),
    ("on-nan", ["--on-nan", "ignore"], ["ignore", "stop", "skip-batch"], 1),
    ("data-dir-missing", ["--data-dir", "{root}/no-such-dir"],
     ["no-such-dir", "does not exist", "--download"], 1),
    ("out-dir-is-a-file", ["--out-dir", "{root}/a-file"], ["a-file", "is a file", "valid:"], 1),
    ("data-unreadable", ["--data-dir", "{root}/corrupt"],
     ["data_batch_2", "truncated or corrupt"], 0),
    ("n-train-too-many", ["--n-train", "1000"], ["--n-train 1000", "40 training", "1..40"], 0),
    ("n-eval-too-many", ["--n-eval", "50"], ["--n-eval 50", "6 test", "1..6"], 0),
    ("probe-n-too-many", ["--probe-n", "100"], ["--probe-n 100", "0..6"], 0),
    ("image-too-small-for-model", ["--dataset", "mnist", "--data-dir", "{root}/mnist12",
                                   "--model", "preactresnet18"],
     ["preactresnet18", "1x12x12", "valid for these images:", "small-cnn"], 0),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_settings(files, tmp_path, capsys, count_loads, case):
    _, extra, expect, static = case
    out = tmp_path / "out"
    extra = [a.replace("{root}", str(files)) for a in extra]
    watched = [extra[extra.index("--out-dir") + 1]] if "--out-dir" in extra else []
    before = {p: snapshot(p) for p in watched}
    rc, err = run_cli(base_args(files / "cifar", out) + extra, capsys)
    assert rc == 2, err
    for s in expect:
        assert s in err, f"{s!r} not in: {err}"
    assert not out.exists()                    # nothing written
    assert {p: snapshot(p) for p in watched} == before
    if static:
        assert count_loads == [], "refused only after loading the data"


def _copy_run(files, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(files / "unfinished", run)
    return run


def test_finished_run_refused_without_overwrite(files, tmp_path, capsys, count_loads):
    run = _copy_run(files, tmp_path)
    (run / "results.json").write_text("{}")
    before = snapshot(run)
    rc, err = run_cli(base_args(files / "cifar", run), capsys)
    assert rc == 2 and "holds a finished run" in err and "--overwrite" in err
    assert str(run) in err and snapshot(run) == before and count_loads == []


def test_unfinished_run_refused_without_resume(files, tmp_path, capsys, count_loads):
    run = _copy_run(files, tmp_path)
    before = snapshot(run)
    rc, err = run_cli(base_args(files / "cifar", run), capsys)
    assert rc == 2 and "unfinished run" in err and f"--resume {run}" in err
    assert snapshot(run) == before and count_loads == []


def test_overwrite_replaces_a_finished_run(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    (run / "results.json").write_text('{"stale": true}')
    (run / "model.pt").write_bytes(b"stale")
    rc, err = run_cli(base_args(files / "cifar", run) + ["--overwrite"], capsys)
    assert rc == 0, err
    results = json.loads((run / "results.json").read_text())
    assert "stale" not in results and results["epochs"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert read_checkpoint(str(run / "checkpoint.pt"))["config"]["optim"]["epochs"] == 1
    assert torch.load(run / "model.pt", weights_only=True)


RESUME_CASES = [
    ("no-such-dir", lambda run: ["--resume", run.parent / "nope"], ["nope", "no such run"]),
    ("no-checkpoint", lambda run: (os.remove(run / "checkpoint.pt"),
                                   ["--resume", run])[1], ["no checkpoint.pt", "--overwrite"]),
    ("finished", lambda run: ((run / "results.json").write_text("{}"),
                              ["--resume", run])[1], ["finished", "nothing to resume"]),
    ("flag-conflict", lambda run: ["--resume", run, "--epochs", "5", "--lr-max", "0.3"],
     ["--epochs, --lr-max cannot be given", "valid with --resume:", "--device"]),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_refusals(files, tmp_path, capsys, case):
    _, make, expect = case
    run = _copy_run(files, tmp_path)
    argv = ["train"] + [str(a) for a in make(run)]
    before = snapshot(run)
    rc, err = run_cli(argv, capsys)
    assert rc == 2, err
    for s in expect:
        assert s in err, f"{s!r} not in: {err}"
    assert snapshot(run) == before


def _tamper(run, key, value):
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    ckpt.pop("format")
    ckpt[key] = value
    write_checkpoint(str(run / "checkpoint.pt"), ckpt)


def test_resume_checkpoint_of_another_architecture(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    _tamper(run, "model", create_model("small-cnn-32", 10, 3, 32).state_dict())
    before = snapshot(run)
    rc, err = run_cli(["train", "--resume", run], capsys)
    assert rc == 2 and "does not fit --model small-cnn with 10 classes" in err
    assert "it fits create_model('small-cnn-32'" in err and snapshot(run) == before


def test_resume_checkpoint_with_another_class_count(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    _tamper(run, "model", create_model("small-cnn", 100, 3, 32).state_dict())
    before = snapshot(run)
    rc, err = run_cli(["train", "--resume", run], capsys)
    assert rc == 2 and "num_classes=100" in err and "10 classes" in err
    assert snapshot(run) == before


def test_resume_on_other_data_refused(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    before = snapshot(run)
    rc, err = run_cli(["train", "--resume", run, "--data-dir", files / "cifar-other"], capsys)
    assert rc == 2 and "differ from those the run was started with" in err
    assert "cifar-other" in err and snapshot(run) == before


def test_resume_truncated_or_code_checkpoint_refused(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    ck = run / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    rc, err = run_cli(["train", "--resume", run], capsys)
    assert rc == 2 and "cannot be loaded" in err and "checkpoint.pt" in err
    marker = tmp_path / "pwned"
    torch.save({"format": "aaer-checkpoint/1", "x": Evil(str(marker))}, ck)
    before = snapshot(run)
    rc, err = run_cli(["train", "--resume", run], capsys)
    assert rc == 2 and "weights_only" in err and not marker.exists()
    assert snapshot(run) == before


class Evil:
    """Unpickling this would create a file: a checkpoint that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- aaer eval -----------------------------------------------------------------------------

def eval_args(files, ckpt, out):
    return ["eval", "--checkpoint", ckpt, "--dataset", "cifar10", "--data-dir",
            files / "cifar", "--model", "small-cnn", "--protocol", "quick", "--out", out]


EVAL_CASES = [
    ("missing-checkpoint", lambda f: [], "{root}/nope.pt", ["nope.pt", "no such file",
                                                           ".safetensors"]),
    ("protocol", lambda f: ["--protocol", "pgd-1000"], None, ["'pgd-1000'", "lineage"]),
    ("epsilon", lambda f: ["--epsilon", "0"], None, ["--epsilon 0.0", "(0, 255]"]),
    ("n-eval", lambda f: ["--n-eval", "0"], None, ["--n-eval 0", ">= 1"]),
    ("pgd-steps", lambda f: ["--pgd-steps", "0"], None, ["--pgd-steps 0", ">= 1"]),
    ("pgd-step", lambda f: ["--pgd-step", "-2"], None, ["--pgd-step -2.0", "> 0"]),
    ("model", lambda f: ["--model", "vit-huge"], None, ["vit-huge", "small-cnn"]),
    ("architecture", lambda f: ["--model", "small-cnn-32"], None,
     ["does not fit --model small-cnn-32", "it fits create_model('small-cnn'"]),
    ("class-count", lambda f: [], "{root}/small-cnn-100.pt",
     ["num_classes=100", "cifar10 (10 classes"]),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_bad_settings(files, tmp_path, capsys, monkeypatch, case):
    _, extra, ckpt, expect = case
    monkeypatch.chdir(tmp_path)
    ckpt = (ckpt or "{root}/small-cnn.pt").replace("{root}", str(files))
    out = tmp_path / "eval.json"
    rc, err = run_cli(eval_args(files, ckpt, out) + extra(files), capsys)
    assert rc == 2, err
    for s in expect:
        assert s in err, f"{s!r} not in: {err}"
    assert os.listdir(tmp_path) == []          # no results file, here or at --out


def test_eval_refuses_a_checkpoint_that_runs_code(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    bad = files / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump(Evil(str(marker)), f)
    rc, err = run_cli(eval_args(files, bad, tmp_path / "eval.json"), capsys)
    assert rc == 2 and "weights_only=True" in err and "evil.pt" in err
    assert not marker.exists() and os.listdir(tmp_path) == []


def test_unfinished_fixture_is_a_real_checkpoint(files):
    ckpt = read_checkpoint(str(files / "unfinished" / "checkpoint.pt"))
    assert ckpt["epoch"] == 0 and ckpt["loader"]["epoch"] == 1 and len(ckpt["history"]) == 1
