"""Every file the program reads, damaged or missing, and every number any command takes,
when it is not a number: exit code 2 and one line naming the file (or flag), what is
wrong and what to do; never a traceback, never a changed or deleted file.

Files: config.json, metrics.jsonl, results.json, checkpoint.pt, best_probe.pt, model.pt,
an exported .safetensors and its .json, an AutoAttack state file, a suite file. Missing
packages: pillow (image folders) and matplotlib (reports).
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from aaer.cli import main
from tests.helpers.files import snapshot, write_cifar10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run (with a CO probe and an export) and an unfinished one, on disk."""
    root = tmp_path_factory.mktemp("damaged")
    data = root / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=8, n_test=6)
    common = ["--dataset", "cifar10", "--data-dir", str(data), "--model", "small-cnn",
              "--method", "rs-aaer", "--batch-size", "8", "--no-progress", "--probe-n", "4"]
    assert main(["train", *common, "--epochs", "1", "--eval-protocol", "quick",
                 "--out-dir", str(root / "done")]) == 0
    assert main(["export", "--run", str(root / "done"), "--out",
                 str(root / "done.safetensors")]) == 0
    from aaer.cli import build_parser, config_from_args
    from aaer.training import build_trainer
    ns = build_parser().parse_args(["train", *common, "--epochs", "2", "--eval-protocol",
                                    "none", "--out-dir", str(root / "open")])
    t = build_trainer(config_from_args(ns))
    t.start()
    t.run_epoch(0)
    t.close()
    return root


def run_cli(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err


def damage(path, how):
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "delete":
        path.unlink()
    else:
        path.write_text(how)


def _ckpt_without(key):
    def f(path):
        ckpt = torch.load(path, weights_only=True)
        del ckpt[key]
        torch.save(ckpt, path)
    return f


# (id, run to copy, file, damage, command (RUN = the copy), strings the message holds)
CASES = [
    ("config-not-json", "done", "config.json", "{", ["report", "RUN"],
     ["config.json", "is not valid JSON", "--overwrite"]),
    ("config-bad-value", "done", "config.json",
     json.dumps({"format": "aaer-run/2", "settings": {"optim": {"epochs": "many"}}}),
     ["eval", "--checkpoint", "RUN", "--protocol", "quick"],
     ["config.json", "--epochs 'many'"]),
    ("config-unknown-setting", "open", "config.json",
     json.dumps({"format": "aaer-run/2", "settings": {"optim": {"epoch_count": 3}}}),
     ["train", "--resume", "RUN"], ["config.json", "optim.epoch_count"]),
    ("metrics-line", "done", "metrics.jsonl", "{\"epoch\": 0}\nnot json\n{\"epoch\": 1}\n",
     ["report", "RUN"], ["metrics.jsonl", "line 2 is not valid JSON"]),
    ("metrics-no-epoch", "done", "metrics.jsonl", "{\"loss\": 1}\n", ["report", "RUN"],
     ["metrics.jsonl", "line 1 has no integer 'epoch'"]),
    ("results-list", "done", "results.json", "[1, 2]", ["report", "RUN"],
     ["results.json", "holds a JSON list"]),
    ("results-evaluation", "done", "results.json", json.dumps({"evaluation": 3}),
     ["export", "--run", "RUN", "--out", "OUT/x.safetensors"],
     ["results.json", "'evaluation' is not an evaluation report"]),
    ("model-truncated", "done", "model.pt", "truncate",
     ["export", "--run", "RUN", "--out", "OUT/x.safetensors"],
     ["model.pt", "cannot be loaded with torch.load(weights_only=True)"]),
    ("model-truncated-eval", "done", "model.pt", "truncate",
     ["eval", "--checkpoint", "RUN", "--protocol", "quick"],
     ["model.pt", "cannot be loaded"]),
    ("checkpoint-truncated", "open", "checkpoint.pt", "truncate", ["train", "--resume", "RUN"],
     ["checkpoint.pt", "cannot be loaded with torch.load(weights_only=True)"]),
    ("checkpoint-lacks-optimizer", "open", "checkpoint.pt", _ckpt_without("optimizer"),
     ["train", "--resume", "RUN"], ["checkpoint.pt", "lacks optimizer", "--overwrite"]),
    ("checkpoint-bad-monitor", "open", "checkpoint.pt", "monitor-junk",
     ["train", "--resume", "RUN"], ["checkpoint.pt", "does not hold a state"]),
    ("best-probe-truncated", "open", "best_probe.pt", "truncate", ["train", "--resume", "RUN"],
     ["best_probe.pt", "cannot be loaded"]),
    ("config-missing", "open", "config.json", "delete", ["train", "--resume", "RUN"],
     ["no config.json"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damaged_run_files(runs, tmp_path, capsys, case):
    _, source, name, how, argv, expect = case
    run = tmp_path / "run"
    shutil.copytree(runs / source, run)
    path = run / name
    if how == "monitor-junk":
        ckpt = torch.load(path, weights_only=True)
        ckpt["monitor"] = {"history": 5}
        torch.save(ckpt, path)
    elif callable(how):
        how(path)
    else:
        damage(path, how)
    (tmp_path / "out").mkdir()
    before = snapshot(run)
    argv = [a.replace("RUN", str(run)).replace("OUT", str(tmp_path / "out")) for a in argv]
    rc, err = run_cli(argv, capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("aaer: error: "), err   # one line
    assert "Traceback" not in err
    for s in expect:
        assert s in err, f"{s!r} not in: {err}"
    assert snapshot(run) == before
    assert os.listdir(tmp_path / "out") == []


def test_damaged_export_metadata(runs, tmp_path, capsys):
    shutil.copy(runs / "done.safetensors", tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text("{ not json")
    rc, err = run_cli(["eval", "--checkpoint", tmp_path / "m.safetensors", "--data-dir",
                       runs / "data", "--protocol", "quick", "--out", tmp_path / "e.json"],
                      capsys)
    assert rc == 2 and "m.json" in err and "is not valid JSON" in err
    (tmp_path / "m.json").write_text(json.dumps({"format": "aaer-export/1"}))
    rc, err = run_cli(["eval", "--checkpoint", tmp_path / "m.safetensors", "--data-dir",
                       runs / "data", "--protocol", "quick"], capsys)
    assert rc == 2 and "does not match its metadata" in err


def test_damaged_autoattack_state(runs, tmp_path, capsys):
    (tmp_path / "autoattack_state_aaer.pt").write_bytes(b"\x00" * 10)
    rc, err = run_cli(["eval", "--checkpoint", runs / "done" / "model.pt", "--dataset",
                       "cifar10", "--data-dir", runs / "data", "--model", "small-cnn",
                       "--protocol", "aaer", "--out", tmp_path / "e.json"], capsys)
    assert rc == 2 and "autoattack_state_aaer.pt" in err and "delete it" in err
    torch.save({"format": "aaer-autoattack-state-1"}, tmp_path / "autoattack_state_aaer.pt")
    rc, err = run_cli(["eval", "--checkpoint", runs / "done" / "model.pt", "--dataset",
                       "cifar10", "--data-dir", runs / "data", "--model", "small-cnn",
                       "--protocol", "aaer", "--out", tmp_path / "e.json"], capsys)
    assert rc == 2 and "is damaged" in err and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("spec, expect", [
    ({"methods": ["rs-fgsm"], "eps": ["x"]}, "'eps' must be numbers"),
    ({"methods": ["rs-fgsm"], "eps": [float("nan")]}, "--epsilon nan"),
    ({"methods": ["rs-fgsm"], "eps": [8], "epochs": 0}, "--epochs 0"),
    ({"methods": "rs-fgsm", "eps": [8]}, "'methods' must be a list"),
    ({"methods": ["rs-fgsm"], "eps": [8], "flags": ["--lr-max", "nan"]}, "--lr-max nan"),
    ({"methods": ["rs-fgsm"], "eps": [8], "flags": ["--lr-mux", "1"]}, "--lr-mux"),
    ({"methods": ["rs-fgsm"], "eps": [8], "method_flags": {"rs-fgsm": "x"}}, "method_flags")])
def test_bad_suite_files(tmp_path, capsys, spec, expect):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(spec))
    rc, err = run_cli(["reproduce", path, "--out", tmp_path / "out", "--dry-run"], capsys)
    assert rc == 2 and expect in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    path.write_text("{ broken")
    rc, err = run_cli(["reproduce", path, "--dry-run"], capsys)
    assert rc == 2 and "could not be parsed" in err and str(path) in err


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--checkpoint", "x.pt", "--epsilon", "nan"], "--epsilon nan"),
    (["eval", "--checkpoint", "x.pt", "--pgd-step", "inf"], "--pgd-step inf"),
    (["eval", "--checkpoint", "x.pt", "--pgd-steps", "0"], "--pgd-steps 0"),
    (["eval", "--checkpoint", "x.pt", "--seed", "-1"], "--seed -1"),
    (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size 0"),
    (["eval", "--checkpoint", "x.pt", "--n-eval", "0"], "--n-eval 0"),
    (["reproduce", "co-fixture", "--seeds", "0"], "--seeds 0"),
    (["reproduce", "co-fixture", "--jobs", "0"], "--jobs 0"),
    (["demo", "--jobs", "0"], "--jobs 0"),
    (["demo", "--threads", "-2"], "--threads -2"),
    (["demo", "--seed", "-5"], "--seed -5"),
    (["train", "--epsilon", "nan"], "--epsilon nan"),
    (["train", "--lr-max", "inf"], "--lr-max inf"),
    (["train", "--momentum", "nan"], "--momentum nan"),
    (["train", "--co-gap", "nan"], "--co-gap nan"),
    (["train", "--set", "lamda2=NaN", "--method", "rs-aaer"], "lamda2")])
def test_numbers_that_are_not_numbers_are_refused_by_every_command(tmp_path, capsys,
                                                                   monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli(argv, capsys)
    assert rc == 2 and flag in err, err
    assert "Traceback" not in err and os.listdir(tmp_path) == []


def test_missing_pillow_is_one_line(tmp_path, capsys, monkeypatch):
    from tests.helpers.files import save_image
    for split in ("train", "test"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / "imgs" / split / c)
            save_image(str(tmp_path / "imgs" / split / c / "0.png"),
                       np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)
    rc, err = run_cli(["train", "--dataset", "imagefolder", "--data-dir", tmp_path / "imgs",
                       "--model", "small-cnn", "--out-dir", tmp_path / "run"], capsys)
    assert rc == 2 and err.strip() == ("aaer: error: decoding image folders needs the pillow "
                                       "package, which is not installed: pip install pillow "
                                       "(aaer depends on it: reinstall aaer)")
    assert not (tmp_path / "run").exists()


def test_missing_matplotlib_is_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, err = run_cli(["report", runs / "done", "--out", tmp_path / "rep"], capsys)
    assert rc == 2 and "plotting a report needs the matplotlib package" in err
    assert not (tmp_path / "rep").exists()
