"""Bring your own model: `--model package.module:factory` (keyword arguments with
--model-arg) trains, resumes bitwise, exports and evaluates like a registered model; its
config records the factory; bad factories are one-line errors. `--normalization` sets what
the model normalises its input with. `--model timm:<name>` needs timm, which cannot be
installed beside the CPU build of torch 2.13 (timm requires torchvision, whose PyPI wheels
pull another torch): its test runs where timm imports."""
import json
import signal

import numpy as np
import pytest
import torch

from aaer.cli import build_parser, main, train_request
from aaer.errors import TrainingInterrupted, UsageError
from aaer.models import build, create_model, input_stats
from aaer.training import build_trainer, resume
from tests.helpers.files import write_cifar10
from tests.helpers.tiny import signal_at

pytestmark = pytest.mark.usefixtures("one_thread")

FACTORY = "tests.helpers.byo:wide_cnn"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo") / "data"
    write_cifar10(str(d), np.random.default_rng(0), per_batch=8, n_test=4)
    return d


def _train(data, out, *extra):
    return main(["train", "--dataset", "cifar10", "--data-dir", str(data), "--model", FACTORY,
                 "--model-arg", "width=6", "--method", "rs-fgsm", "--epochs", "2",
                 "--batch-size", "8", "--eval-protocol", "quick", "--no-progress",
                 "--device", "cpu", "--out-dir", str(out), *extra])


def test_a_factory_model_trains_resumes_exports_and_evaluates(data, tmp_path, capsys):
    """The factory gets num_classes and in_channels from aaer and width from --model-arg;
    config.json records the factory and its arguments; a run stopped mid-epoch resumes to
    the uninterrupted run's weights; the export and `aaer eval` rebuild it from its files."""
    assert _train(data, tmp_path / "ref") == 0
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert cfg["settings"]["model"] == {"name": FACTORY, "kwargs": {"width": 6},
                                        "normalization": "dataset"}
    w = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert w["conv.weight"].shape == (6, 3, 3, 3) and w["fc.weight"].shape == (10, 6)
    ns = build_parser().parse_args(["train", "--dataset", "cifar10", "--data-dir", str(data),
                                    "--model", FACTORY, "--model-arg", "width=6", "--method",
                                    "rs-fgsm", "--epochs", "2", "--batch-size", "8",
                                    "--eval-protocol", "quick", "--no-progress", "--device",
                                    "cpu", "--out-dir", str(tmp_path / "cut")])
    del ns.command
    t = build_trainer(train_request(ns))
    signal_at(t, 1, 1, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resume(str(tmp_path / "cut"))
    w2 = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(w[k], w2[k]) for k in w)
    st = tmp_path / "m.safetensors"
    assert main(["export", "--run", str(tmp_path / "ref"), "--out", str(st)]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["model_args"] == {"width": 6}
    for ckpt, out in ((tmp_path / "ref", "e1.json"), (st, "e2.json")):
        assert main(["eval", "--checkpoint", str(ckpt), "--protocol", "quick", "--out",
                     str(tmp_path / out)]) == 0
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())["evaluation"]["results"]
    for out in ("e1.json", "e2.json"):
        got = json.loads((tmp_path / out).read_text())
        assert got["results"]["pgd"]["acc"] == ref["pgd"]["acc"]
        assert got["settings"]["model_args"] == {"width": 6}
    capsys.readouterr()


@pytest.mark.parametrize("name,args,expect", [
    ("tests.helpers.nowhere:net", {}, "cannot import 'tests.helpers.nowhere'"),
    ("tests.helpers.byo:missing", {}, "has no callable 'missing'"),
    ("tests.helpers.byo:not_a_module", {}, "returned a str, not a torch.nn.Module"),
    ("tests.helpers.byo:wide_cnn", {"depth": 3}, "refused its arguments"),
    ("small-cnn", {"width": 3}, "takes no --model-arg"),
])
def test_bad_factories_are_usage_errors(name, args, expect):
    with pytest.raises(UsageError, match=expect):
        create_model(name, 10, 3, 32, **args)


def test_a_factory_gets_only_the_arguments_it_takes():
    """fixed_cnn takes neither num_classes nor in_channels: aaer passes only width."""
    net = create_model("tests.helpers.byo:fixed_cnn", 10, 3, 32, width=5)
    assert net.conv.out_channels == 5


def test_normalization_none_and_imagenet(data, tmp_path, capsys):
    """--normalization none: the model subtracts 0 and divides by 1 (recorded in config.json
    as model_input); imagenet: ImageNet's statistics."""
    assert _train(data, tmp_path / "n", "--normalization", "none", "--epochs", "1") == 0
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())
    assert cfg["model_input"] == {"normalization": "none", "mean": [0.0, 0.0, 0.0],
                                  "std": [1.0, 1.0, 1.0]}
    m = build("small-cnn", 10, 3, 32, *input_stats("imagenet", (0.5,) * 3, (0.2,) * 3, 3))
    assert torch.allclose(m.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    capsys.readouterr()


def test_timm_models_train_where_timm_installs(data, tmp_path, capsys):
    """`--model timm:resnet18` (random init, no download). timm needs torchvision; PyPI's
    torchvision pulls another torch than the CPU build these tests run on, so on such a
    machine this test is skipped with that reason (README: Bring your own model)."""
    pytest.importorskip("timm", reason="timm needs torchvision, which cannot be installed "
                        "beside the CPU build of torch 2.13 without pulling another torch")
    out = tmp_path / "timm"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(data), "--model",
                 "timm:resnet18", "--method", "rs-fgsm", "--epochs", "1", "--batch-size", "8",
                 "--eval-protocol", "none", "--no-progress", "--device", "cpu",
                 "--out-dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["model"]["name"] == \
        "timm:resnet18"


def test_timm_without_timm_is_one_line(capsys):
    try:
        import timm  # noqa: F401
        pytest.skip("timm is installed here: the missing-package message cannot be shown")
    except ImportError:
        pass
    with pytest.raises(UsageError, match=r"needs the timm package.*pip install"):
        create_model("timm:resnet18", 10, 3, 32)
