"""Recipe files: `aaer train --config FILE` (JSON, TOML, YAML; nested by the schema's
sections or flat by flag names; flags win; provenance "config FILE"), a run's config.json
trains the same run again, `aaer config show` prints a recipe that --config reads back, and
bad recipes are one line naming the file and the key."""
import json

import numpy as np
import pytest
import torch

from aaer.cli import build_parser, main, train_request
from aaer.config import resolve
from aaer.config.recipe import request_from_file, to_yaml
from tests.helpers.files import write_cifar10

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--method", "rs-aaer", "--epsilon", "16", "--epochs", "3", "--lr-max", "0.1"]


def _resolved(argv):
    ns = build_parser().parse_args(["train", *argv])
    del ns.command
    return resolve(train_request(ns))


RECIPES = {
    "nested.yaml": "method:\n  name: rs-aaer\n  epsilon: 16\noptim:\n  epochs: 3\n"
                   "  lr_max: 0.1\n",
    "flat.toml": 'method = "rs-aaer"\nepsilon = 16\nepochs = 3\n"lr-max" = 0.1\n',
    "flat.json": json.dumps({"method": "rs-aaer", "epsilon": 16, "epochs": 3, "lr_max": 0.1}),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_recipe_resolves_as_its_flags_do(tmp_path, name):
    """Nested YAML, flat TOML with flag names, flat JSON with flat names: the same run as
    the flags, every given value's source "config FILE", the rest resolved as usual."""
    path = tmp_path / name
    path.write_text(RECIPES[name])
    from_file = _resolved(["--config", str(path)])
    from_flags = _resolved(FLAGS)
    assert from_file.to_dict() == from_flags.to_dict()
    assert from_file.sources["optim.epochs"] == f"config {path}"
    assert from_file.sources["optim.epochs"].kind == "config-file"
    assert from_file.sources["method.lamda2"] == "published cifar10 eps 16"


def test_flags_win_over_the_recipe(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"method": "rs-aaer", "epochs": 3, "set": {"lamda3": 2.0}}))
    r = _resolved(["--config", str(path), "--epochs", "5"])
    assert r.optim.epochs == 5 and r.sources["optim.epochs"] == "explicit"
    assert r.method.lamda3 == 2.0 and r.sources["method.lamda3"] == f"config {path}"


@pytest.mark.parametrize("text,expect", [
    ('{"epochs": 3, "lr-maxx": 0.1}', "unknown setting 'lr-maxx'"),
    ('{"optim": {"epochs": 3, "lr_maxx": 0.1}}', "unknown setting optim.lr_maxx"),
    ('{"epochs": "three"}', "epochs: invalid --epochs 'three'"),
    ('{"lr-max": -1}', "lr-max: invalid --lr-max -1"),
    ('{"epsilon": NaN}', "epsilon: invalid --epsilon nan"),
    ('[1, 2]', "a recipe is a mapping of settings"),
    ('{"epochs": ', "could not be parsed"),
])
def test_bad_recipes_are_one_line_naming_file_and_key(tmp_path, capsys, text, expect):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expect in err, err
    assert not (tmp_path / "r").exists()


def test_config_show_prints_a_recipe_that_config_reads_back(tmp_path, capsys):
    """`aaer config show` prints every resolved value with its source; read back with
    --config it resolves to the same run."""
    assert main(["config", "show", *FLAGS, "--probe-n", "100"]) == 0
    text = capsys.readouterr().out
    assert "lamda2: 7.0" in text and "# published cifar10 eps 16" in text
    path = tmp_path / "shown.yaml"
    path.write_text(text)
    again = _resolved(["--config", str(path)])
    assert again.to_dict() == _resolved([*FLAGS, "--probe-n", "100"]).to_dict()
    assert to_yaml(again).splitlines()[0] == "data:"


def test_a_runs_config_json_trains_the_same_run_again(tmp_path, capsys):
    """`aaer train --config runs/x/config.json --out-dir runs/y` trains the same weights on
    CPU, Free-AT included (its epoch rule, already applied in config.json, is not applied
    again: 4 epochs of 2 replays stay 2 passes)."""
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=8, n_test=4)
    base = ["--dataset", "cifar10", "--data-dir", str(data), "--model", "small-cnn",
            "--batch-size", "8", "--eval-protocol", "none", "--no-progress", "--device", "cpu"]
    for method, extra in (("rs-aaer", ["--epochs", "2"]),
                          ("free", ["--epochs", "4", "--set", "replays=2"])):
        x, y = tmp_path / f"{method}-x", tmp_path / f"{method}-y"
        assert main(["train", *base, "--method", method, *extra, "--out-dir", str(x)]) == 0
        assert main(["train", "--config", str(x / "config.json"), "--out-dir", str(y)]) == 0
        a = torch.load(x / "model.pt", weights_only=True)
        b = torch.load(y / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), method
        cx = json.loads((x / "config.json").read_text())
        cy = json.loads((y / "config.json").read_text())
        assert cy["settings"]["optim"] == cx["settings"]["optim"]
        assert cy["source_kinds"]["optim.epochs"] == "run-config"
        assert cy["settings"]["runtime"]["out_dir"] == str(y)
    capsys.readouterr()


def test_request_from_file_skips_the_run_directory_of_a_config_json(tmp_path):
    """The run directory a config.json names is not part of the recipe."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"format": "aaer-run/2", "settings": {
        "optim": {"epochs": 3}, "runtime": {"out_dir": "runs/old", "overwrite": True}}}))
    req = request_from_file(str(path))
    assert req.given() == {"optim.epochs": 3}
