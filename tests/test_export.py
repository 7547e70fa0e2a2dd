"""`aaer export`: a finished run as safetensors + JSON metadata, read back by `aaer eval`
with the same numbers as evaluating the run directory; tampering and bad requests refused."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from aaer.cli import main
from aaer.export import read_exported
from tests.helpers.files import write_cifar10, write_cifar100


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_cifar10(str(root / "data"), np.random.default_rng(0), per_batch=8, n_test=6)
    out = root / "run"
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(root / "data"), "--model",
               "small-cnn", "--method", "rs-aaer", "--epochs", "1", "--batch-size", "8",
               "--eval-protocol", "quick", "--no-progress", "--device", "cpu",
               "--out-dir", str(out)])
    assert rc == 0
    return root, out


def _eval(checkpoint, out, *extra):
    return main(["eval", "--checkpoint", str(checkpoint), "--protocol", "quick", "--device",
                 "cpu", "--out", str(out), *extra])


def test_export_then_eval_gives_the_runs_numbers(run, tmp_path, capsys):
    root, out = run
    st = tmp_path / "model.safetensors"
    assert main(["export", "--run", str(out), "--out", str(st)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "model.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert meta["sha256"] == hashlib.sha256(st.read_bytes()).hexdigest()
    assert (meta["dataset"], meta["model"], meta["num_classes"], meta["in_channels"],
            meta["image_size"]) == ("cifar10", "small-cnn", 10, 3, 32)
    assert meta["mean"] == cfg["data"]["mean"] and meta["std"] == cfg["data"]["std"]
    assert meta["epsilon"] == 8.0 and meta["eps"] == pytest.approx(8 / 255)
    assert meta["method"]["name"] == "rs-aaer" and meta["method"]["lamda2"] == 2.5
    assert meta["results"] == results and meta["training"]["epochs"] == 1

    state, meta2 = read_exported(str(st))
    ref = torch.load(out / "model.pt", weights_only=True)
    assert list(state) and set(state) == set(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert meta2 == meta

    assert _eval(st, tmp_path / "e_st.json") == 0          # dataset/model/eps from metadata
    assert _eval(out, tmp_path / "e_run.json") == 0
    a = json.loads((tmp_path / "e_st.json").read_text())["results"]
    b = json.loads((tmp_path / "e_run.json").read_text())["results"]
    for attack in ("clean", "fgsm", "pgd"):
        assert (a[attack]["acc"], a[attack]["loss"]) == (b[attack]["acc"], b[attack]["loss"])
    # the training run's own quick evaluation gave the same numbers
    assert a["pgd"]["acc"] == results["evaluation"]["results"]["pgd"]["acc"]

    # without the JSON the header's copy of the metadata is used
    os.remove(tmp_path / "model.json")
    assert _eval(st, tmp_path / "e_header.json") == 0
    c = json.loads((tmp_path / "e_header.json").read_text())["results"]
    assert c["pgd"]["acc"] == a["pgd"]["acc"]


def test_tampered_or_mismatched_export_refused(run, tmp_path, capsys):
    root, out = run
    st = tmp_path / "m.safetensors"
    assert main(["export", "--run", str(out), "--out", str(st)]) == 0
    capsys.readouterr()
    # another data set with a different class count
    write_cifar100(str(tmp_path / "c100"), np.random.default_rng(0))
    assert _eval(st, tmp_path / "x.json", "--dataset", "cifar100", "--data-dir",
                 str(tmp_path / "c100")) == 2
    err = capsys.readouterr().err
    assert "trained with 10 classes" in err and "cifar100 has 100" in err
    assert "--dataset cifar10" in err and not (tmp_path / "x.json").exists()
    # one flipped byte in the weights
    blob = bytearray(st.read_bytes())
    blob[-1] ^= 0xFF
    st.write_bytes(bytes(blob))
    assert _eval(st, tmp_path / "x.json") == 2
    err = capsys.readouterr().err
    assert "does not match its metadata" in err and "sha256" in err
    assert not (tmp_path / "x.json").exists()


def test_export_refusals(run, tmp_path, capsys):
    root, out = run
    st = tmp_path / "a.safetensors"
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "a.pt")]) == 2
    assert "must end with .safetensors" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(st)]) == 2
    assert "no such run directory" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"dataset": "cifar10"}))
    assert main(["export", "--run", str(unfinished), "--out", str(st)]) == 2
    err = capsys.readouterr().err
    assert "not a finished run (missing model.pt, results.json)" in err and "--resume" in err
    assert main(["export", "--run", str(out), "--out", str(st)]) == 0
    before = st.read_bytes(), (tmp_path / "a.json").read_bytes()
    assert main(["export", "--run", str(out), "--out", str(st)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and str(st) in err
    assert (st.read_bytes(), (tmp_path / "a.json").read_bytes()) == before
    assert main(["export", "--run", str(out), "--out", str(st), "--overwrite"]) == 0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_eval_settings_are_resolved_with_their_sources(run, tmp_path):
    """`aaer eval` resolves its settings as training does: an explicit flag wins, then what
    the model's files say (the run's config.json, or an export's metadata), then the
    schema's defaults; the report keeps every value with its source. Rules out the old
    literal-default chain, which recorded no source and let a default shadow the run's."""
    root, out = run
    assert _eval(out, tmp_path / "e.json", "--epsilon", "4") == 0
    rep = json.loads((tmp_path / "e.json").read_text())
    s, src, kinds = rep["settings"], rep["sources"], rep["source_kinds"]
    assert s["epsilon"] == 4.0 and src["epsilon"] == "explicit"
    assert s["model"] == "small-cnn" and s["dataset"] == "cifar10"
    assert src["model"] == src["dataset"] == src["data_dir"] == \
        f"the run's config.json ({out})" and kinds["model"] == "request"
    assert s["data_dir"] == str(root / "data")
    assert s["pgd_steps"] is None and src["pgd_steps"] == "default" and kinds["pgd_steps"] == "default"
    assert rep["eps"] == pytest.approx(4 / 255)
    st = tmp_path / "m.safetensors"
    assert main(["export", "--run", str(out), "--out", str(st)]) == 0
    assert _eval(st, tmp_path / "e2.json") == 0
    src2 = json.loads((tmp_path / "e2.json").read_text())["sources"]
    assert src2["epsilon"] == src2["model"] == "export metadata of m.safetensors"
