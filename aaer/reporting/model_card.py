"""RobustBench model cards: ``aaer eval --model-card FILE``.

A card is the JSON RobustBench keeps per model in model_info/<dataset>/<Linf|L2>/<name>.json
(RobustBench/robustbench, e.g. model_info/cifar10/Linf/Wong2020Fast.json; the fields and
their order as robustbench/utils.py's ModelInfo lists them): ``link``, ``name``,
``authors``, ``additional_data`` (bool), ``number_forward_passes`` (int), ``dataset``,
``venue``, ``architecture``, ``eps`` ("8/255" for L-inf, "0.5" for L2), ``clean_acc``,
``reported``, ``autoattack_acc`` (percentages as strings with two decimals, "43.21") and
``footnote``.

aaer fills in what it knows: the data set, the architecture and eps of the evaluation, the
clean and AutoAttack accuracies of the report, the training method (its registry's
description names it, its source gives the authors of the method) from the run's
config.json or an export's metadata. What it cannot know (the paper's ``link`` and
``venue``, the ``reported`` number) is left empty and the footnote says so. RobustBench's
number is AutoAttack standard on the full test set, so a card is only written from such an
evaluation (``check_protocol``, ``check_full_test_set``: refused before any work).
"""
from __future__ import annotations

import re
from typing import Any

from aaer import __version__
from aaer.errors import UsageError

FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
          "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
          "footnote")
# aaer's model names -> RobustBench's spelling (model_info/*/*/*.json "architecture")
ARCHITECTURES = {"preactresnet18": "PreActResNet-18",
                 "preactresnet18-preact-shortcut": "PreActResNet-18",
                 "resnet18-imagenet": "ResNet-18"}
AA_VERSION = "standard"
HOW = ("use --protocol aaer or fastat (AutoAttack standard on the full test set), or add "
       "autoattack to --attacks")


def check_protocol(protocol) -> None:
    """UsageError unless ``protocol`` (aaer.attacks.protocols.Protocol) runs AutoAttack
    standard, which is what RobustBench reports."""
    if "autoattack" not in protocol.attacks:
        raise UsageError(f"--model-card needs AutoAttack (standard) on the full test set, "
                         f"and protocol {protocol.name!r} does not run it (it runs "
                         f"{', '.join(protocol.attacks)}); {HOW}")
    if protocol.aa_version != AA_VERSION:
        raise UsageError(f"--model-card needs AutoAttack version {AA_VERSION} (RobustBench's "
                         f"number), not {protocol.aa_version!r}; leave --aa-version and "
                         "--aa-attacks out")


def check_full_test_set(protocol, n_test: int, dataset: str) -> None:
    """UsageError when ``protocol`` evaluates only the first --n-eval of the ``n_test``
    test points."""
    if protocol.n_eval is not None and protocol.n_eval < n_test:
        raise UsageError(f"--model-card needs AutoAttack on the full test set: --n-eval "
                         f"{protocol.n_eval} (of protocol {protocol.name!r}) runs it on "
                         f"{protocol.n_eval} of the {n_test} test points of {dataset}; leave "
                         "--n-eval out")


def architecture(model: str) -> str:
    """RobustBench's name of an aaer model (WideResNet-34-10, PreActResNet-18, ...)."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", model)
    return f"WideResNet-{m[1]}-{m[2]}" if m else ARCHITECTURES.get(model, model)


def eps_text(epsilon: float, norm: str) -> str:
    """--epsilon as RobustBench writes eps: "8/255" (L-inf, in 1/255), "0.5" (L2, pixels)."""
    return f"{epsilon:g}/255" if norm == "linf" else f"{epsilon:g}"


def percent(acc: float) -> str:
    """An accuracy in [0, 1] as RobustBench writes it: "43.21"."""
    return f"{100 * acc:.2f}"


def source_authors(source: str) -> str:
    """The authors in a method's source text ("Lin, Yu, Liu, NeurIPS 2023" -> "Lin, Yu,
    Liu"; several papers joined by "; ")."""
    out = []
    for part in source.split(";"):
        part = re.sub(r"\([^)]*\)", "", part).strip()
        m = re.match(r"(.*?),?\s*(?:(?:[A-Z][A-Za-z]+\s+)?(?:19|20)\d\d\b|arXiv:)", part)
        out.append((m[1] if m else part).strip(" ,"))
    return "; ".join(a for a in out if a)


def method_name(method: str, description: str) -> str:
    """How the method calls itself ("N-AAER" from "N-AAER: N-FGSM attack ..."), else its
    registry name."""
    head = description.split(":", 1)[0] if ":" in description else ""
    return head if head and len(head) <= 24 and " " not in head else method


def model_card(report: dict[str, Any], *, dataset: str, model: str, epsilon: float,
               norm: str, training: dict[str, Any]) -> dict[str, Any]:
    """The card of an evaluation ``report`` (aaer.evaluation.evaluate, with AutoAttack
    standard on the full test set) of a model trained as ``training`` says: {"method",
    "epochs", "seed", "epsilon", "norm"} from the run's config.json or an export."""
    from aaer.methods import METHODS
    aa = report["results"]["autoattack"]
    clean = report["results"].get("clean", {"acc": aa["clean_acc"]})["acc"]
    method = training["method"]
    cls = METHODS.get(method)
    source = getattr(cls, "source", "") or ""
    shown = method_name(method, getattr(cls, "description", "") or "")
    trained = [f"{shown} ({source})" if source else shown, f"{dataset}", architecture(model)]
    if training.get("epsilon") is not None:
        trained.append(f"eps {eps_text(training['epsilon'], training.get('norm') or norm)}")
    if training.get("epochs") is not None:
        n = training["epochs"]
        trained.append(f"{n} epoch{'s' if n != 1 else ''}")
    if training.get("seed") is not None:
        trained.append(f"seed {training['seed']}")
    precision = report.get("precision")
    footnote = (f"Trained with aaer {__version__}: {', '.join(trained)}. Clean and AutoAttack "
                f"({aa.get('version', AA_VERSION)}, {aa.get('backend', 'native')} backend"
                + (f", {precision} autocast" if precision else "")
                + f") accuracy from `aaer eval` on the full test set ({report['n']} points, "
                f"seed {report['seed']}). Authors are the method's; link, venue and reported "
                "are to be filled in by the author.")
    card = {"link": "", "name": f"{shown} adversarial training ({architecture(model)}, aaer)",
            "authors": source_authors(source), "additional_data": False,
            "number_forward_passes": 1, "dataset": dataset, "venue": "",
            "architecture": architecture(model), "eps": eps_text(epsilon, norm),
            "clean_acc": percent(clean), "reported": "", "autoattack_acc": percent(aa["acc"]),
            "footnote": footnote}
    assert tuple(card) == FIELDS
    return card
