"""The package-level API a RobustBench user recognises: aaer.load_model, aaer.evaluate (an
nn.Module of one's own or a path, under a named protocol), aaer.train / aaer.resolve /
aaer.RunConfig / aaer.TrainConfig; `import aaer` itself imports no torch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import aaer
from aaer.data import load_dataset
from aaer.evaluation import evaluate as run_protocol, get_protocol
from tests.helpers.files import write_cifar10

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_aaer_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, aaer\nprint('torch' in "
                          "sys.modules, sorted(aaer.__all__))"], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("False"), out.stderr
    for name in ("train", "evaluate", "load_model", "resolve", "RunConfig", "TrainConfig"):
        assert name in out.stdout


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    d = tmp_path_factory.mktemp("api") / "data"
    write_cifar10(str(d), np.random.default_rng(0), per_batch=8, n_test=6)
    return d


def test_evaluate_your_own_model_in_three_lines(cifar):
    """The README's quickstart: an nn.Module of one's own (pixels in [0, 1] in, logits out)
    under AutoAttack; its numbers equal the protocol run through aaer.evaluation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    report = aaer.evaluate(model, dataset="cifar10", data_dir=str(cifar), epsilon=8,
                           protocol="autoattack", n_eval=6, device="cpu")
    assert set(report["results"]) == {"clean", "autoattack"}
    data = load_dataset("cifar10", str(cifar))
    ref = run_protocol(model.eval(), data.test_x, data.test_y, 8 / 255,
                       get_protocol("autoattack", n_eval=6), device="cpu")
    assert report["results"]["autoattack"]["acc"] == ref["results"]["autoattack"]["acc"]
    assert report["protocol"]["name"] == "autoattack+custom" and report["n"] == 6


def test_load_model_reads_a_run_its_weights_and_its_export(cifar, tmp_path, capsys):
    """aaer.load_model on a run directory, its model.pt and its export gives the same
    network (eval mode); aaer.evaluate takes the path directly."""
    cfg = aaer.TrainConfig(dataset="cifar10", data_dir=str(cifar), model="small-cnn",
                           method="rs-fgsm", epochs=1, batch_size=8, eval_protocol="none",
                           progress=False, device="cpu", out_dir=str(tmp_path / "run"))
    assert aaer.resolve(cfg.request).method.alpha == 1.25
    assert isinstance(cfg.request, aaer.RunConfig)
    aaer.train(cfg)
    from aaer.cli import main
    assert main(["export", "--run", str(tmp_path / "run"), "--out",
                 str(tmp_path / "m.safetensors")]) == 0
    x = torch.rand(4, 3, 32, 32)
    outs = [aaer.load_model(str(p))(x) for p in (tmp_path / "run", tmp_path / "run" /
                                                 "model.pt", tmp_path / "m.safetensors")]
    assert not aaer.load_model(str(tmp_path / "run")).training
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    rep = aaer.evaluate(str(tmp_path / "run"), dataset="cifar10", data_dir=str(cifar),
                        protocol="quick", n_eval=4, device="cpu")
    assert rep["n"] == 4 and "pgd" in rep["results"]
    capsys.readouterr()


def test_evaluate_refuses_bad_input(cifar):
    from aaer.errors import UsageError
    with pytest.raises(UsageError, match="--epsilon"):
        aaer.evaluate(torch.nn.Identity(), dataset="cifar10", data_dir=str(cifar),
                      epsilon=float("nan"))
    with pytest.raises(UsageError, match="takes an nn.Module or a path"):
        aaer.evaluate(42, dataset="cifar10", data_dir=str(cifar))
    with pytest.raises(UsageError, match="unknown protocol|--protocol"):
        aaer.evaluate(torch.nn.Identity(), dataset="cifar10", data_dir=str(cifar),
                      protocol="nope")
