"""One schema, one resolution: every door trains the same run for the same settings.

- API = CLI: for every method x {cifar10, cifar100, svhn} x eps {8, 16}, the run the flat
  Python API resolves equals the one the CLI's flags resolve (every setting and where it
  came from), as do AAER.py's and a suite line's;
- the recipe facts behind that: published lambdas at eps 16, Free-AT's epochs, the SVHN
  defaults, GradAlign's lr, presets, and explicit settings winning over all of them;
- provenance in config.json;
- every `aaer train` flag is generated from one setting, and cli.py names none of them.
"""
import inspect
import json
import math

import pytest

from aaer.cli import build_parser, train_request
from aaer.config import SETTINGS, RunConfig, from_flat, resolve
from aaer.config.flags import request_from_argv
from aaer.methods import METHODS
from aaer.training import TrainConfig

DATASETS = ("cifar10", "cifar100", "svhn")


def cli_run(argv, seed_script=False):
    ns = build_parser().parse_args((["train"] if argv[:1] != ["train"] else []) + argv)
    del ns.command
    return resolve(train_request(ns, seed_script=seed_script))


def same(a: RunConfig, b: RunConfig):
    assert a.to_dict() == b.to_dict()
    assert a.sources == b.sources


@pytest.mark.parametrize("eps", [8, 16])
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", list(METHODS))
def test_api_equals_cli(method, dataset, eps):
    api = TrainConfig(method=method, dataset=dataset, epsilon=eps, out_dir="runs/x").resolve()
    argv = ["--method", method, "--dataset", dataset, "--epsilon", str(eps), "--out-dir",
            "runs/x"]
    same(api, cli_run(argv))
    same(api, resolve(request_from_argv(argv)))          # a suite line (aaer reproduce)
    same(api, cli_run(argv, seed_script=True))           # AAER.py with --dataset given
    same(api, resolve(from_flat({"method": method, "dataset": dataset, "epsilon": eps,
                                 "out_dir": "runs/x"})))


def test_the_four_api_cases_of_the_issue():
    # published lambdas at eps 16
    r = TrainConfig(method="rs-aaer", epsilon=16, dataset="cifar10").resolve()
    assert (r.method.lamda2, r.method.lamda3) == (7.0, 3.25)
    assert r.sources["method.lamda2"] == "published cifar10 eps 16"
    r = TrainConfig(method="n-aaer", epsilon=16, dataset="cifar100").resolve()
    assert (r.method.lamda2, r.method.lamda3) == (6.0, 0.5)
    # Free-AT: epochs / m replays, rounded up, also for explicit epochs
    r = TrainConfig(method="free", epochs=8).resolve()
    assert r.optim.epochs == 1 and r.method.options["replays"] == 8
    assert r.sources["optim.epochs"].startswith("explicit 8, trained as 1 (free")
    assert TrainConfig(method="free").resolve().optim.epochs == math.ceil(30 / 8)
    # SVHN: 15 epochs, lr 0.05 peaking at 2/5, a 5-epoch warm-up
    r = TrainConfig(method="rs-aaer", dataset="svhn").resolve()
    assert (r.optim.epochs, r.optim.lr_max, r.optim.lr_peak, r.method.warmup_epochs) == \
        (15, 0.05, 0.4, 5.0)
    assert r.sources["optim.lr_max"] == "dataset svhn"
    assert r.sources["method.warmup_epochs"] == "dataset svhn"
    # a method without a warm-up setting is not given one
    r = TrainConfig(method="pgd", dataset="svhn").resolve()
    assert r.method.warmup_epochs is None and "warmup_epochs" not in r.method.options


def test_precedence_explicit_wins():
    r = TrainConfig(method="rs-aaer", epsilon=16, lamda2=1.0).resolve()
    # one published value given: the table is not used, the other takes the method default
    assert (r.method.lamda2, r.method.lamda3) == (1.0, 1.5)
    assert r.sources["method.lamda2"] == "explicit"
    assert r.sources["method.lamda3"] == "method default"
    r = TrainConfig(method="gradalign").resolve()
    assert r.optim.lr_max == 0.3 and r.sources["optim.lr_max"] == "method gradalign"
    r = TrainConfig(method="gradalign", dataset="svhn").resolve()
    assert r.optim.lr_max == 0.3                       # the method's change beats the data set's
    r = TrainConfig(method="gradalign", lr_max=0.1).resolve()
    assert r.optim.lr_max == 0.1 and r.sources["optim.lr_max"] == "explicit"
    r = TrainConfig(method="rs-aaer", dataset="svhn", warmup_epochs=0, epochs=3).resolve()
    assert r.method.warmup_epochs == 0.0 and r.optim.epochs == 3


def test_presets_automatic_named_and_overridden():
    r = TrainConfig(method="zerograd", dataset="cifar100").resolve()
    assert r.method.preset == "cifar100-eps8" and r.method.options["q"] == 0.45
    assert r.sources["method.options.q"] == "preset zerograd cifar100-eps8"
    r = TrainConfig(method="zerograd", dataset="cifar100", method_hparams={"q": 0.2}).resolve()
    assert r.method.options["q"] == 0.2 and r.sources["method.options.q"] == "explicit"
    r = cli_run(["--method", "pgd", "--preset", "pgd10", "--set", "steps=3"])
    assert (r.method.options["steps"], r.method.options["step255"]) == (3, 2.0)
    with pytest.raises(ValueError, match="'nope' is not a preset of pgd"):
        TrainConfig(method="pgd", preset="nope").resolve()


def test_the_seed_scripts_rule():
    r = cli_run(["--clamp", "1"])
    assert r.method.name == "rs-aaer" and (r.method.alpha, r.method.lamda2) == (1.0, 4.0)
    assert r.sources["method.alpha"] == "seed script default"
    r = TrainConfig().resolve()            # no method: the seed script's N-AAER, as the CLI
    same(r, cli_run([]))
    assert r.method.name == "n-aaer" and r.method.clamp == 0
    r = cli_run(["--out-dir", "CIFAR100_RS-AAER_8", "--clamp", "1"], seed_script=True)
    assert r.data.dataset == "cifar100"
    assert r.sources["data.dataset"].startswith("inferred from --out-dir 'CIFAR100_RS-AAER_8'")


def test_method_flags_a_method_does_not_take_are_refused():
    with pytest.raises(ValueError, match="--method fgsm does not take --lamda1"):
        TrainConfig(method="fgsm", lamda1=2.0).resolve()
    with pytest.raises(ValueError, match="--alpha given twice"):
        cli_run(["--method", "rs-fgsm", "--alpha", "1", "--set", "alpha=2"])


@pytest.mark.parametrize("flat, flag", [
    ({"epsilon": float("nan")}, "--epsilon nan"), ({"lr_max": float("inf")}, "--lr-max inf"),
    ({"lr_peak": float("nan")}, "--lr-peak nan"), ({"momentum": float("-inf")}, "--momentum"),
    ({"weight_decay": float("nan")}, "--weight-decay nan"), ({"epochs": 2.5}, "--epochs 2.5"),
    ({"batch_size": True}, "--batch-size True"), ({"seed": 2 ** 32}, "--seed"),
    ({"alpha": float("nan"), "method": "rs-fgsm"}, "--alpha nan"),
    ({"lamda2": float("inf"), "method": "rs-aaer"}, "--lamda2 inf"),
    ({"method_hparams": {"q": float("nan")}, "method": "zerograd"}, "q"),
    ({"co_drop": float("nan")}, "--co-drop nan"), ({"probe_n": -1}, "--probe-n -1"),
    ({"dist_timeout": 0}, "--dist-timeout 0"), ({"eval_batch_size": 0}, "--eval-batch-size"),
    ({"warmup_epochs": float("inf"), "method": "rs-aaer"}, "--warmup-epochs inf")])
def test_non_numbers_and_out_of_range_are_refused_by_name(flat, flag):
    with pytest.raises(ValueError, match=flag.replace("(", r"\(")):
        TrainConfig(**flat).resolve()


def test_provenance_in_config_json(tmp_path):
    from aaer.training import train
    from tests.helpers.tiny import tiny_dataset
    out = tmp_path / "run"
    data = tiny_dataset(32, 16, classes=4, name="tiny", learnable=True)
    train(TrainConfig(method="rs-aaer", epsilon=16, dataset="cifar10", preset=None,
                      model="small-cnn", epochs=1, batch_size=16, eval_protocol="none",
                      progress=False, device="cpu", out_dir=str(out)), data)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "aaer-run/2"
    assert cfg["settings"]["method"]["lamda2"] == 7.0
    assert cfg["sources"]["method.lamda2"] == "published cifar10 eps 16"
    assert cfg["sources"]["optim.epochs"] == "explicit"
    assert cfg["sources"]["optim.lr_max"] == "default"
    log = (out / "train.log").read_text()
    assert "--lamda2 7.0: published cifar10 eps 16" in log


def test_an_explicit_setting_wins_over_a_preset_in_provenance():
    r = cli_run(["--method", "elle-a", "--preset", "n-eps8", "--set", "lamda_max=100"])
    assert r.method.options["lamda_max"] == 100
    assert r.sources["method.options.lamda_max"] == "explicit"
    assert r.sources["method.options.noise"] == "preset elle-a n-eps8"


def test_every_train_flag_is_defined_once_by_a_setting():
    parser = build_parser()
    train = next(a for a in parser._subparsers._actions if a.choices)._name_parser_map["train"]
    flags = [f for a in train._actions for f in a.option_strings if f not in ("-h", "--help")]
    assert len(flags) == len(set(flags))
    from aaer.config.commands import TrainCommand
    from aaer.config.settings import settings_of
    expected = {s.negate or s.flag for s in SETTINGS.values()} | \
        {a for s in SETTINGS.values() for a in s.aliases} | \
        {s.flag for _, s in settings_of(TrainCommand)}
    assert set(flags) == expected
    # and nothing else writes them: cli.py is generated from the settings
    cli_source = open(inspect.getsourcefile(build_parser)).read()
    written = [f for f in expected if f'"{f}"' in cli_source]
    assert not written, written


def test_every_method_setting_round_trips_through_the_schema():
    """Each method's hparams() are exactly its constructor keywords, so a resolved run
    rebuilds the same method."""
    for name, cls in METHODS.items():
        m = cls(8 / 255)
        assert set(m.hparams()) - {"eps"} == set(cls.keywords()), name


def test_a_run_directory_of_aaer_0_1_loads(tmp_path):
    """config.json and checkpoint config in the flat format of aaer 0.1 still load."""
    from aaer.runs import RunDir, checkpoint_settings
    d = tmp_path / "old"
    d.mkdir()
    flat = {"out_dir": str(d), "dataset": "cifar10", "data_dir": None, "download": False,
            "n_train": 64, "model": "small-cnn", "method": "rs-aaer",
            "method_hparams": {"lamda2": 7.0, "lamda3": 3.25}, "epsilon": 16.0, "epochs": 4,
            "batch_size": 32, "lr_schedule": "cyclic", "lr_min": 0.0, "lr_max": 0.2,
            "lr_peak": 0.5, "momentum": 0.9, "weight_decay": 5e-4, "seed": 1,
            "device": "auto", "precision": "fp32", "eval_protocol": "lineage", "n_eval": None,
            "eval_batch_size": None, "eval_precision": "fp32", "probe_n": 0,
            "probe_steps": 10, "progress": True, "overwrite": False, "notes": ["x"],
            "on_nan": "stop", "compile": False, "channels_last": "auto", "eps": 16 / 255,
            "method_resolved": {"name": "rs-aaer"}, "data": {"n_train": 64}}
    (d / "config.json").write_text(json.dumps(flat))
    cfg = RunDir(str(d)).settings()
    assert (cfg.method.name, cfg.method.lamda2, cfg.method.alpha, cfg.optim.epochs) == \
        ("rs-aaer", 7.0, 1.25, 4)
    assert cfg.runtime.tensorboard is False                    # newer than the file: default
    assert checkpoint_settings({"config": flat}).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, problem", [("{", "is not valid JSON"), ("[1, 2]", "JSON list"),
                                           ('{"format": "aaer-run/9"}', "unknown format"),
                                           ('{"epochs": "many"}', "--epochs 'many'"),
                                           ('{"method": "aaer-v0"}', "unknown --method 'aaer-v0'")])
def test_a_damaged_config_json_is_named_with_what_to_do(tmp_path, text, problem):
    from aaer.errors import DamagedFile
    from aaer.runs import RunDir
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(DamagedFile) as e:
        RunDir(str(tmp_path)).settings()
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "config.json")) and problem in msg
    assert "--overwrite" in msg


def _stopped_after_epoch_0(tmp_path, method):
    """A 2-epoch run of ``method`` trained to its end (``ref``) and the same run stopped after
    epoch 0 (``old``, with its checkpoint), as a run killed there leaves it."""
    import numpy as np

    from aaer.cli import config_from_args, main
    from aaer.training import build_trainer
    from tests.helpers.files import write_cifar10
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=8, n_test=6)
    flags = ["train", "--dataset", "cifar10", "--data-dir", str(data), "--model", "small-cnn",
             "--method", method, "--epsilon", "16", "--epochs", "2", "--batch-size", "8",
             "--eval-protocol", "none", "--no-progress"]
    assert main(flags + ["--out-dir", str(tmp_path / "ref")]) == 0
    old = tmp_path / "old"
    t = build_trainer(config_from_args(build_parser().parse_args(flags + ["--out-dir",
                                                                          str(old)])))
    t.start()
    t.run_epoch(0)
    t.close()
    return old


def _same_weights_as_ref(tmp_path, old):
    import torch
    a = torch.load(old / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    return all(torch.equal(a[k], b[k]) for k in b)


def test_an_aaer_0_1_run_directory_resumes_and_evaluates(tmp_path, capsys):
    """A run stopped after epoch 0 whose config.json and checkpoint config are in aaer 0.1's
    flat format: `--resume` finishes it with the weights of an uninterrupted run, and
    `aaer eval` and `aaer report` read it."""
    from aaer.cli import main
    from aaer.runs import RunDir, read_checkpoint, write_checkpoint
    old = _stopped_after_epoch_0(tmp_path, "rs-aaer")
    # rewrite config.json and the checkpoint's config as aaer 0.1 wrote them (flat)
    new = RunDir(str(old)).settings()
    flat = {k: v for k, v in new.flat().items()
            if k not in ("tensorboard", "dist_timeout", "preset", "options", "alpha",
                         "delta_init", "clamp", "lamda1", "lamda2", "lamda3", "aaer_mode",
                         "warmup_epochs")}
    flat.update(method_hparams={"lamda2": 7.0, "lamda3": 3.25}, notes=[], eps=16 / 255)
    raw = RunDir(str(old)).config()
    (old / "config.json").write_text(json.dumps({**flat, **{k: raw[k] for k in raw
                                                          if k not in ("format", "settings",
                                                                       "sources",
                                                                       "source_kinds")}}))
    ckpt = read_checkpoint(str(old / "checkpoint.pt"))
    ckpt.pop("format")
    ckpt["config"] = flat
    write_checkpoint(str(old / "checkpoint.pt"), ckpt)

    assert main(["train", "--resume", str(old)]) == 0
    assert _same_weights_as_ref(tmp_path, old)
    assert main(["eval", "--checkpoint", str(old), "--protocol", "quick"]) == 0
    assert json.loads((old / "eval_quick.json").read_text())["dataset"] == "cifar10"
    assert main(["report", str(old)]) == 0
    capsys.readouterr()


def test_a_run_written_before_norm_image_size_and_workers_existed_resumes(tmp_path):
    """config.json and checkpoint.pt without the settings added later (--norm, --image-size,
    --workers): they read as what aaer did then (linf, not streamed), and the run resumes to
    the weights of an uninterrupted one; a setting that was always written stays required."""
    from aaer.cli import main
    from aaer.errors import DamagedFile
    from aaer.runs import RunDir, read_checkpoint, write_checkpoint
    old = _stopped_after_epoch_0(tmp_path, "rs-fgsm")
    later = {"data": ("image_size", "workers"), "method": ("norm",)}
    raw = json.loads((old / "config.json").read_text())
    ckpt = read_checkpoint(str(old / "checkpoint.pt"))
    for section, names in later.items():
        for name in names:
            del raw["settings"][section][name]
            del ckpt["config"][section][name]
    (old / "config.json").write_text(json.dumps(raw))
    write_checkpoint(str(old / "checkpoint.pt"), ckpt)

    cfg = RunDir(str(old)).settings()
    assert (cfg.method.norm, cfg.data.image_size, cfg.data.workers) == ("linf", None, None)
    assert cfg.sources["method.norm"].startswith("not in the run's files")
    assert main(["train", "--resume", str(old)]) == 0
    assert _same_weights_as_ref(tmp_path, old)

    del raw["settings"]["optim"]["epochs"]
    (old / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DamagedFile, match=r"1 setting\(s\) missing: optim.epochs"):
        RunDir(str(old)).settings()
