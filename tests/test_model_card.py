"""`aaer eval --model-card FILE`: a RobustBench model card (model_info/<dataset>/<Linf|L2>/
<name>.json of RobustBench/robustbench) from a run evaluated with AutoAttack standard on its
whole (tiny) test set, from a run directory and from an export; every evaluation that is
not that is refused before any work."""
import json
import os
import re

import numpy as np
import pytest

from aaer.cli import main
from aaer.reporting.model_card import architecture, eps_text, source_authors
from tests.helpers.files import write_cifar10

pytestmark = pytest.mark.usefixtures("one_thread")

# the fields of RobustBench's cards, in their order (robustbench/utils.py ModelInfo; e.g.
# model_info/cifar10/Linf/Andriushchenko2020Understanding.json)
ROBUSTBENCH_FIELDS = ["link", "name", "authors", "additional_data", "number_forward_passes",
                      "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                      "autoattack_acc", "footnote"]
STRINGS = ("link", "name", "authors", "dataset", "venue", "architecture", "eps", "clean_acc",
           "reported", "autoattack_acc", "footnote")
N_TEST = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch N-AAER run on a tiny CIFAR-10 in the official file format."""
    root = tmp_path_factory.mktemp("card")
    write_cifar10(str(root / "data"), np.random.default_rng(0), per_batch=8, n_test=N_TEST)
    out = root / "run"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(root / "data"), "--model",
                 "small-cnn", "--method", "n-aaer", "--epochs", "1", "--batch-size", "8",
                 "--eval-protocol", "none", "--no-progress", "--device", "cpu",
                 "--out-dir", str(out)]) == 0
    return out


def _eval(checkpoint, *flags):
    return main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", *flags])


def _assert_robustbench_format(card):
    assert list(card) == ROBUSTBENCH_FIELDS
    for key in STRINGS:
        assert isinstance(card[key], str), key
    assert card["additional_data"] is False
    assert type(card["number_forward_passes"]) is int and card["number_forward_passes"] == 1
    for key in ("clean_acc", "autoattack_acc"):
        assert re.fullmatch(r"\d{1,3}\.\d{2}", card[key]), card[key]
    assert (card["link"], card["venue"], card["reported"]) == ("", "", "")
    assert "link, venue and reported are to be filled in by the author" in card["footnote"]


@pytest.mark.timeout(180)
def test_card_of_a_run_evaluated_with_autoattack_on_the_full_test_set(run, tmp_path,
                                                                      capsys):
    card_path = tmp_path / "card.json"
    assert _eval(run, "--protocol", "aaer", "--model-card", str(card_path)) == 0
    assert f"model card written to {card_path}" in capsys.readouterr().out
    card = json.loads(card_path.read_text())
    _assert_robustbench_format(card)
    report = json.loads((run / "eval_aaer.json").read_text())
    assert report["n"] == N_TEST and report["model_card"] == str(card_path)
    clean, aa = report["results"]["clean"]["acc"], report["results"]["autoattack"]["acc"]
    assert card["clean_acc"] == f"{100 * clean:.2f}"
    assert card["autoattack_acc"] == f"{100 * aa:.2f}"
    # RobustBench's own check of a card (tests/test_clean_acc_jsons.py)
    assert float(card["clean_acc"]) == round(clean * 100, 2)
    assert (card["dataset"], card["eps"], card["architecture"]) == ("cifar10", "8/255",
                                                                    "small-cnn")
    assert card["authors"] == "Lin, Yu, Liu"
    assert card["name"] == "N-AAER adversarial training (small-cnn, aaer)"
    assert card["footnote"].startswith("Trained with aaer ")
    assert ("N-AAER (Lin, Yu, Liu, NeurIPS 2023), cifar10, small-cnn, eps 8/255, 1 epoch, "
            "seed 0. Clean and AutoAttack (standard, native backend) accuracy from `aaer "
            f"eval` on the full test set ({N_TEST} points, seed 0).") in card["footnote"]


@pytest.mark.timeout(180)
def test_card_of_an_export_under_l2(run, tmp_path):
    st = tmp_path / "model.safetensors"
    assert main(["export", "--run", str(run), "--out", str(st)]) == 0
    card_path = tmp_path / "l2.json"
    assert _eval(st, "--protocol", "aaer", "--norm", "l2", "--epsilon", "0.5",
                 "--data-dir", str(run.parent / "data"), "--out", str(tmp_path / "e.json"),
                 "--model-card", str(card_path)) == 0
    card = json.loads(card_path.read_text())
    _assert_robustbench_format(card)
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["norm"] == "l2"
    assert card["eps"] == "0.5"                          # as RobustBench's L2 cards write it
    assert card["autoattack_acc"] == f"{100 * report['results']['autoattack']['acc']:.2f}"
    assert card["authors"] == "Lin, Yu, Liu" and "N-AAER (Lin, Yu, Liu" in card["footnote"]


@pytest.mark.parametrize("flags, says", [
    (["--protocol", "lineage"], "--model-card needs AutoAttack (standard) on the full test "
     "set, and protocol 'lineage' does not run it (it runs clean, fgsm, pgd); use --protocol "
     "aaer or fastat"),
    (["--protocol", "aaer", "--n-eval", "6"], "--model-card needs AutoAttack on the full test "
     "set: --n-eval 6 (of protocol 'aaer+custom') runs it on 6 of the 12 test points of "
     "cifar10; leave --n-eval out"),
    (["--protocol", "aaer", "--aa-version", "plus"], "--model-card needs AutoAttack version "
     "standard (RobustBench's number), not 'plus'"),
    (["--protocol", "aaer", "--attacks", "clean,autoattack", "--aa-attacks", "apgd-ce"],
     "not 'custom'"),
])
def test_evaluations_that_are_not_robustbench_s_are_refused(run, tmp_path, capsys, flags,
                                                            says):
    card_path = tmp_path / "card.json"
    before = set(os.listdir(run))
    assert _eval(run, *flags, "--out", str(tmp_path / "e.json"),
                 "--model-card", str(card_path)) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0
    assert not card_path.exists() and not (tmp_path / "e.json").exists()
    assert set(os.listdir(run)) == before                # refused before any work


def test_a_card_needs_the_training_method_and_a_folder(run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "weights.pt").write_bytes((run / "model.pt").read_bytes())
    assert _eval(bare / "weights.pt", "--dataset", "cifar10", "--model", "small-cnn",
                 "--protocol", "aaer", "--model-card", str(tmp_path / "c.json")) == 2
    assert "--model-card needs the training method" in capsys.readouterr().err
    assert _eval(run, "--protocol", "aaer", "--model-card",
                 str(tmp_path / "no" / "c.json")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert os.listdir(bare) == ["weights.pt"]                # nothing written


def test_names_as_robustbench_writes_them():
    assert [architecture(m) for m in ("preactresnet18", "wrn-34-10", "wrn-28-10",
                                      "resnet18-imagenet")] == \
        ["PreActResNet-18", "WideResNet-34-10", "WideResNet-28-10", "ResNet-18"]
    assert [eps_text(8, "linf"), eps_text(16, "linf"), eps_text(0.5, "l2")] == \
        ["8/255", "16/255", "0.5"]
    assert source_authors("Lin, Yu, Liu, NeurIPS 2023") == "Lin, Yu, Liu"
    assert source_authors("Andriushchenko & Flammarion, NeurIPS 2020") == \
        "Andriushchenko & Flammarion"
    assert source_authors("Madry et al., ICLR 2018; Rice et al. 2020") == \
        "Madry et al.; Rice et al."
    assert source_authors("Golgooni et al., arXiv:2103.15476 (ZeroGrad)") == "Golgooni et al."
    assert source_authors("Kim, Lee, Lee, AAAI 2021 (Harry24k/catastrophic-overfitting)") == \
        "Kim, Lee, Lee"
