"""The FastAT Benchmark's protocol as aaer suites, and its published numbers beside aaer's.

    aaer reproduce fastat-cifar10 | fastat-cifar100 | fastat-tinyimagenet [--seeds 3]

fzjcdt/FastAT_Benchmark (Pan and Yao, arXiv 2604.22853; files read at commit
``BENCHMARK_COMMIT``; docs/methods/fastat-benchmark.md) trains every method under one
recipe: ``configs/<dataset>/common.yaml`` (model, batch 128, 49000/1000 or 98000/2000
training/validation images, eps 8/255) merged with ``configs/<dataset>/<method>.yaml``
(100 epochs of one-cycle SGD stepped per epoch, lr 0.1, momentum 0.9, weight decay 5e-4,
label smoothing 0.4, weight averaging tau 0.9995, the method's own keys). Each suite here is
one `aaer train` line per method of that list (its config name mapped to aaer's method and
its keys to aaer's settings, per data set), plus aaer's methods the benchmark lacks (LAP,
MultiGrad), each for seeds 0..N-1.

The summary puts the benchmark's published means and standard deviations
(``fastat_published.json``, extracted from its ``benchmark_data.json`` by
``python -m aaer.experiments.fastat extract <benchmark_data.json>``) beside aaer's numbers.
What aaer cannot reproduce of a method's benchmark implementation is said in ``Entry.note``
and printed with the summary.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from aaer.io import atomic_write_bytes

BENCHMARK_REPO = "fzjcdt/FastAT_Benchmark"
BENCHMARK_COMMIT = "b99c0de60e57128254234f2d79719b74792a4037"
PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "fastat_published.json")
# the metrics of benchmark_data.json (accuracies in percent, time in seconds, memory in GiB)
METRICS = ("clean_acc", "pgd_10_acc", "pgd_20_acc", "pgd_50_acc", "autoattack_acc",
           "cr_attack_acc", "total_training_time", "max_gpu_memory")


# -- the protocol ---------------------------------------------------------------------------

SUITES = {"fastat-cifar10": "cifar10", "fastat-cifar100": "cifar100",
          "fastat-tinyimagenet": "tinyimagenet"}
# aaer's data set name -> the benchmark's (configs/<name>/, benchmark_data.json's keys)
BENCHMARK_DATASET = {"cifar10": "cifar10", "cifar100": "cifar100",
                     "tinyimagenet": "tiny-imagenet"}
# configs/<dataset>/common.yaml: model (ResNet18 / PreActResNet18, no normalisation layer)
# and val_size
MODEL = {"cifar10": "resnet18", "cifar100": "resnet18", "tinyimagenet": "preactresnet18-fastat"}
VAL_N = {"cifar10": 1000, "cifar100": 1000, "tinyimagenet": 2000}
EPOCHS = 100                       # total_epoch of every method file but free_at.yaml
LABEL_SMOOTHING = 0.4              # label_smoothing of every method file but liet.yaml
TAU = 0.9995                       # weight_average: true, tau: 0.9995
SEEDS = 3                          # the benchmark's results: seeds 0, 1, 2 (--scale tiny: 1)


def protocol_flags(dataset: str) -> list[str]:
    """The `aaer train` flags every run of a suite shares (common.yaml and the training keys
    every method file repeats); the method's own flags come after them."""
    return ["--dataset", dataset, "--model", MODEL[dataset], "--normalization", "none",
            "--epsilon", "8", "--epochs", str(EPOCHS), "--batch-size", "128",
            "--lr-schedule", "onecycle", "--lr-max", "0.1", "--momentum", "0.9",
            "--weight-decay", "5e-4", "--val-n", str(VAL_N[dataset]),
            "--select", "best-val-pgd", "--eval-protocol", "fastat"]


@dataclass(frozen=True)
class Entry:
    """One method of the suites: the benchmark's config (``key``, configs/<ds>/<key>.yaml)
    or aaer's method name for a method the benchmark lacks; aaer's method and flags (a
    value may be a {dataset: value} dict); whether --label-smoothing 0.4 and
    --weight-average are passed; what aaer does not reproduce (``note``)."""

    key: str
    method: str
    label: str
    flags: tuple = ()
    smoothing: bool = True          # --label-smoothing 0.4 (False: the method's own / none)
    weight_average: bool = True     # --weight-average 0.9995
    config: bool = True             # the benchmark has configs/<ds>/<key>.yaml
    note: str = ""

    def argv(self, dataset: str) -> list[str]:
        out = ["--method", self.method]
        for f in self.flags:
            out.append(str(f[dataset]) if isinstance(f, dict) else str(f))
        if self.weight_average:
            out += ["--weight-average", f"{TAU:g}"]
        if self.smoothing:
            out += ["--label-smoothing", f"{LABEL_SMOOTHING:g}"]
        return out


def per(cifar10, cifar100, tinyimagenet) -> dict[str, Any]:
    return {"cifar10": cifar10, "cifar100": cifar100, "tinyimagenet": tinyimagenet}


OWN = "its own label smoothing (the method refuses --label-smoothing)"
# aaer's --label-smoothing smooths every CE on the true labels of a step; these benchmark
# files smooth the training loss only
PLAIN_ATTACK = ("--label-smoothing also smooths the attack's cross-entropy{}, where the "
                "benchmark's {} uses plain CrossEntropyLoss there")
ENTRIES = (
    Entry("fgsm_at", "fgsm", "FGSM-AT"),
    Entry("fgsm_rs", "rs-fgsm", "FGSM-RS"),
    Entry("n_fgsm", "n-fgsm", "N-FGSM"),
    Entry("fgsm_pgi", "fgsm-pgi", "FGSM-PGI",
          ("--set", "epochs_reset=40", "--set", "momentum_decay=0.3", "--set", "lamda=10"),
          smoothing=False, note=f"{OWN}: official factor-0.6 targets, where the benchmark's "
          "fast_at/fgsm_pgi.py uses CrossEntropyLoss(label_smoothing=0.4) on hard labels and "
          "clips x + prior to [0, 1] (docs/methods/fgsm-pgi.md)"),
    Entry("fgsm_mep_cs", "fgsm-mep-cs", "FGSM-MEP-CS",
          ("--set", "epochs_reset=40", "--set", "momentum_decay=0.3", "--set", "factor=0.6",
           "--set", "lamda=10", "--set", "gamma=0.03", "--set", "ratio=1", "--set", "stride=1",
           "--set", "w2=1.0", "--delta-init", "random"),
          smoothing=False, note=f"{OWN}: factor-0.6 targets once, where the benchmark smooths "
          "them again with label_smoothing 0.4 (docs/methods/fgsm-mep-cs.md); decay_arr [0, "
          "100, 105, 110] over 100 epochs gates epochs 2-98, as aaer's default milestones do"),
    Entry("fgsm_rs_cs", "fgsm-rs-cs", "FGSM-RS-CS",
          ("--set", "factor=0.6", "--set", "gamma=0.03", "--set", "ratio=1", "--set", "stride=1",
           "--set", "w2=1.0"),
          smoothing=False, note=f"{OWN}: factor-0.6 targets once and a plain-CE attack, where "
          "the benchmark smooths twice and attacks the 0.4-smoothed loss "
          "(docs/methods/fgsm-rs-cs.md); its lamda 7 multiplies regularisers that are off"),
    Entry("fgsm_pco", "fgsm-pco", "FGSM-PCO",
          ("--set", "factor=0.6", "--set", "beta=1.5", "--set", "lamda=10",
           "--delta-init", "random"),
          smoothing=False, note=f"{OWN}: factor-0.6 targets once, where the benchmark smooths "
          "them again with label_smoothing 0.4 (docs/methods/fgsm-pco.md)"),
    Entry("zero_grad", "zerograd", "ZeroGrad",
          ("--set", per("q=0.35", "q=0.45", "q=0.35"), "--set", "noise=rs", "--alpha", "2.0"),
          note=PLAIN_ATTACK.format("", "fast_at/zero_grad.py")),
    Entry("n_aaer", "n-aaer", "N-AAER",
          ("--lamda1", "1.0", "--lamda2", "1.5", "--lamda3", "0.15", "--clamp", "0",
           "--alpha", "1.0", "--delta-init", "random"),
          smoothing=False, note="no label smoothing: the benchmark's fast_at/aaer.py never "
          "uses its smoothed criterion (plain CrossEntropyLoss), although n_aaer.yaml lists 0.4"),
    Entry("rs_aaer", "rs-aaer", "RS-AAER",
          ("--lamda1", "1.0", "--lamda2", per("2.5", "3.5", "3.5"), "--lamda3", "1.5",
           "--clamp", "1", "--alpha", "1.25", "--delta-init", "random"),
          smoothing=False, note="no label smoothing, as N-AAER; the benchmark has "
          "rs_aaer.yaml but no results for it"),
    Entry("elle", "elle", "ELLE",
          ("--set", "lamda=1.0", "--set", "noise=rs", "--alpha", "1.25"),
          note="the benchmark's attack (elle.yaml clamp: false) does not project the "
          "U(-eps, eps) + 1.25 eps step back to the eps-ball; aaer's noise=rs does; " +
          PLAIN_ATTACK.format(" and the linearity error's", "fast_at/elle.py")),
    Entry("grad_align", "gradalign", "GradAlign", ("--set", "lamda=0.2"),
          note=PLAIN_ATTACK.format(" and the alignment term's", "fast_at/grad_align.py")),
    Entry("free_at", "free", "Free-AT", ("--epochs", "200", "--set", "replays=4"),
          note="total_epoch 200 with m 4 trains 50 epochs; the benchmark's OneCycleLR was "
          "built for 200 steps and stepped 50 times (the lr only warms up, to 0.093), aaer's "
          "runs its one cycle over the 50 epochs; the benchmark restarts the perturbation "
          "from 0 at every minibatch, aaer's Free-AT carries it over"),
    Entry("nu_at", "nuat", "NuAT", ("--set", "nuc_max=4.0", "--set", "ramp=1.0"),
          note="the benchmark attacks the train-mode model; aaer follows the official "
          "eval-mode attack (aaer/methods/nuat.py)"),
    Entry("gat", "gat", "GAT", ("--set", "l2_reg=10",),
          note="the benchmark's even-batch attack loss is the CE of the softmax "
          "probabilities (a bug, fast_at/gat.py); aaer uses the logits as the official code"),
    Entry("ssat", "ssat", "SSAT", ("--alpha", "1.25", "--set", "c=3")),
    Entry("pgd_at", "pgd", "PGD-AT",
          ("--set", "steps=10", "--set", "step255=2", "--set", "attack_mode=eval"),
          weight_average=False,
          note=PLAIN_ATTACK.format("", "torchattacks PGD (fast_at/pgd_at.py)")),
    Entry("pgd_at_wa", "pgd", "PGD-AT-WA",
          ("--set", "steps=10", "--set", "step255=2", "--set", "attack_mode=eval"),
          note=PLAIN_ATTACK.format("", "torchattacks PGD (fast_at/pgd_at.py)")),
    Entry("fgsm_uap", "fgsm-uap", "FGSM-UAP",
          ("--set", "lamda=10", "--set", "uap_scale=1.25", "--set", "momentum_decay=0.3",
           "--set", "label_smoothing=0.4"), smoothing=False, note=OWN + " (0.4, the same)"),
    Entry("fgsm_cuap", "fgsm-cuap", "FGSM-CUAP",
          ("--set", "lamda=10", "--set", "uap_scale=1.25", "--set", "momentum_decay=0.3",
           "--set", "label_smoothing=0.4"), smoothing=False, note=OWN + " (0.4, the same)"),
    Entry("fgsm_fuap", "fgsm-fuap", "FGSM-FUAP",
          ("--set", "lamda=10", "--set", "uap_scale=1.25", "--set", "momentum_decay=0.3",
           "--set", "label_smoothing=0.4", "--set", per("uap_num=50", "uap_num=200",
                                                          "uap_num=200")),
          smoothing=False, note=OWN + " (0.4, the same); the selector's head has one output "
          "per class, where Tiny-ImageNet's fgsm_fuap.yaml gives it 300 (class_num 300)"),
    Entry("liet", "liet", "LIET",
          ("--set", per("lamda=100", "lamda=200", "lamda=100"),
           "--set", per("label_smoothing=0.6", "label_smoothing=0.8", "label_smoothing=0.6"),
           "--set", "min_mask_ratio=0.1", "--set", "max_mask_ratio=0.5",
           "--set", "li_update=20"), smoothing=False, note=OWN + " (liet.yaml's "
          "label_smoothing, 0.6; CIFAR-100 0.8)"),
    # aaer's methods the benchmark lacks, under its protocol with their own defaults
    Entry("v-lap", "v-lap", "V-LAP", config=False),
    Entry("r-lap", "r-lap", "R-LAP", config=False),
    Entry("n-lap", "n-lap", "N-LAP", config=False),
    Entry("multigrad", "multigrad", "MultiGrad", config=False),
)
BY_LABEL = {e.label: e for e in ENTRIES}

# what every run on these data sets differs in from the benchmark's, whatever its method
COMMON_DIFFERENCES = (
    (("cifar10", "cifar100", "tinyimagenet"), "initial weights: seeded here (--seed), drawn "
     "unseeded there (set_seed runs after the model is built, main.py)"),
    (("tinyimagenet",), "the validation split is the last 2000 training images in aaer's "
     "order, where the benchmark draws 2000 at random per seed (main.py); random crops pad 8 "
     "pixels (aaer's size/8), where the benchmark pads 4 (utils/dataset.py)"),
)


# --scale tiny trains these only: one line of each kind (label smoothing 0.4, the method's
# own smoothing and per-example memory, the epoch rule, no weight averaging so the last
# epoch's model is the compared one, a method the benchmark lacks). Each run costs minutes
# on a CPU however small the model: the protocol's AutoAttack and CR spend their whole
# budget on the points an untrained model happens to get right.
TINY = ("FGSM-RS", "FGSM-PGI", "Free-AT", "PGD-AT", "V-LAP")


def suite_rows(suite: str, scale: str = "full") -> list[tuple[str, str, float, list[str]]]:
    """(run name, label, eps, flags) of every method of a FastAT suite (``scale`` tiny: the
    methods of TINY), seed not yet set."""
    dataset = SUITES[suite]
    rows = []
    for e in ENTRIES:
        if scale == "tiny" and e.label not in TINY:
            continue
        own = e.argv(dataset)
        rows.append((f"{dataset}_{e.key}", e.label, 8.0,
                     _without(protocol_flags(dataset), own) + own))
    return rows


def _without(flags: list[str], later: list[str]) -> list[str]:
    """``flags`` (flag-value pairs) less the flags ``later`` sets again (Free-AT's
    --epochs 200), so that every flag of a suite line appears once."""
    again = set(later[::2]) & set(flags[::2])
    out = []
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag not in again:
            out += [flag, value]
    return out


def scale_flags(scale: str, dataset: str) -> list[str]:
    """Flags that shrink a FastAT suite: ``small`` (every method, 5 epochs of a small CNN on
    10000 images, the protocol's attacks on 1000 test points) and ``tiny`` (the methods of
    TINY, 1 epoch of a small CNN on 256 images with 64 held out, the protocol's attacks on
    32 test points). Every stage of the pipeline runs (validation and selection, the fastat
    evaluation of both models, the summary beside the published numbers); the numbers mean
    nothing, and the summary says so."""
    if scale == "full":
        return []
    if scale == "small":
        return ["--epochs", "5", "--n-train", "10000", "--val-n", "1000",
                "--model", "small-cnn-32", "--n-eval", "1000"]
    return ["--epochs", "1", "--n-train", "256", "--val-n", "64", "--model", "small-cnn",
            "--batch-size", "64", "--n-eval", "32"]


# -- the published numbers ------------------------------------------------------------------

def extract_published(data: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The small file aaer ships from the benchmark's benchmark_data.json: per data set and
    method, the mean and std of every metric and each seed's value, copied unchanged."""
    results: dict[str, Any] = {}
    for ds, methods in data.items():
        results[ds] = {}
        for m, entry in sorted(methods.items()):
            results[ds][m] = {
                "seeds": {s: {k: v[k] for k in METRICS} for s, v in sorted(entry["seeds"].items())},
                **{k: {"mean": entry[k]["mean"], "std": entry[k]["std"]} for k in METRICS}}
    return {"source": source,
            "units": {"clean_acc": "% of the test set", "pgd_10_acc": "%", "pgd_20_acc": "%",
                      "pgd_50_acc": "%", "autoattack_acc": "%", "cr_attack_acc": "%",
                      "total_training_time": "seconds of training (validation excluded)",
                      "max_gpu_memory": "GiB, torch.cuda.max_memory_allocated / 1024**3"},
            "aggregate": "mean and sample standard deviation (statistics.stdev) over the seeds, "
                         "as the benchmark's parse_logs.py computes them",
            "results": results}


def published(path: str = PUBLISHED_FILE) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def published_row(dataset: str, entry: Entry, data: dict[str, Any]) -> dict[str, Any] | None:
    """The benchmark's numbers for ``entry`` on ``dataset`` (None: it has none)."""
    return data["results"].get(BENCHMARK_DATASET[dataset], {}).get(entry.key) \
        if entry.config else None


# -- the summary ----------------------------------------------------------------------------

# aaer's attacks of the fastat protocol and the benchmark's metric each is compared with
ATTACKS = (("clean", "clean", "clean_acc"), ("pgd", "PGD-50", "pgd_50_acc"),
           ("cr", "CR", "cr_attack_acc"), ("autoattack", "AA", "autoattack_acc"))
MODELS = ("evaluated", "selected")
RESULT_KEYS = {"evaluated": "evaluation", "selected": "evaluation_selected"}
SOURCE = "FastAT Benchmark, benchmark_data.json"


def compared_model(entry: Entry) -> str:
    """The aaer model the benchmark's number is comparable with: it evaluates best.pth (the
    validation-selected model) when weight averaging is on, the last epoch's otherwise
    (fast_at/at_base.py, _run_final_evaluation)."""
    return "selected" if entry.weight_average else "evaluated"


def expected_settings(dataset: str, entry: Entry) -> dict[str, Any]:
    """Flat setting -> the value a run of ``entry`` trains with under the full protocol."""
    from aaer.config.schema import FLAT
    want = {"model": MODEL[dataset], "normalization": "none", "epochs": EPOCHS,
            "batch_size": 128, "lr_schedule": "onecycle", "lr_max": 0.1, "n_train": None,
            "val_n": VAL_N[dataset], "n_eval": None, "eval_protocol": "fastat", "epsilon": 8.0,
            "weight_average": TAU if entry.weight_average else 0.0}
    if entry.key == "free_at":
        want["epochs"] = 50                     # total_epoch 200 // m 4
    want["label_smoothing"] = LABEL_SMOOTHING if entry.smoothing else None
    # settings this aaer lacks are not checked (--normalization and --label-smoothing came
    # with aaer's bring-your-own-model and label-smoothing work)
    return {k: v for k, v in want.items() if k in FLAT}


def deviations(settings, dataset: str, entry: Entry) -> list[str]:
    """What a finished run's settings (its config.json) change of the protocol, e.g.
    ["epochs 1 (protocol 100)", "model small-cnn (protocol resnet18)"]."""
    from aaer.config.schema import FLAT
    out = []
    for name, want in expected_settings(dataset, entry).items():
        got = settings.get(FLAT[name][0])
        if name == "label_smoothing" and not entry.smoothing and not got:
            continue                            # off, or the method's own
        if got != want and not (isinstance(got, float) and isinstance(want, (int, float))
                                and math.isclose(got, want)):
            out.append(f"{FLAT[name][1].flag} {'all' if got is None else got} (protocol "
                       f"{'all' if want is None else want})")
    return out


def run_row(run, run_dir: str, dataset: str) -> dict[str, Any]:
    """One finished run: accuracies in % of both models, cost, the selected epoch, and how
    its settings differ from the protocol."""
    from aaer.runs import Row, load_run
    r = load_run(run_dir, need_epochs=False)
    res = r.results or {}
    entry = BY_LABEL[run.label]
    row: dict[str, Any] = {"run": run.name, "label": run.label, "seed": run.seed}
    for which in MODELS:
        ev = (res.get(RESULT_KEYS[which]) or {}).get("results") or {}
        for a, _, _ in ATTACKS:
            acc = (ev.get(a) or {}).get("acc")
            row[f"{which}_{a}"] = None if acc is None else 100.0 * acc
        row[f"{which}_n"] = max([(v or {}).get("n") or 0 for v in ev.values()], default=0) or None
    cost = res.get("cost") or {}
    row["device_hours"] = cost.get("device_hours")
    row["peak_memory_gb"] = cost.get("peak_memory_gb")
    row["device"] = cost.get("device_name") or cost.get("device")
    secs = [x.get(Row.SECONDS) for x in r.rows if x.get(Row.SECONDS) is not None]
    row["train_loop_seconds"] = sum(secs) if secs else None
    chosen = ((res.get("validation") or {}).get("selected") or {})
    row["selected_at"] = (f"{chosen['model']} @ {chosen['epoch']}"
                          if chosen.get("epoch") is not None else None)
    row["deviations"] = deviations(r.settings, dataset, entry)
    return row


def _mean_std(values) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


AAER_COLUMNS = tuple(f"{w}_{a}" for w in MODELS for a, _, _ in ATTACKS) + \
    ("device_hours", "train_loop_seconds", "peak_memory_gb")


def summarize(rows: list[dict[str, Any]], dataset: str,
              data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method (in the suite's order): aaer's mean and std over seeds, and the
    benchmark's published mean and std."""
    out = []
    for e in ENTRIES:
        rs = [r for r in rows if r["label"] == e.label]
        if not rs:
            continue
        s: dict[str, Any] = {"method": e.label, "aaer_method": e.method,
                             "benchmark_config": f"configs/{BENCHMARK_DATASET[dataset]}/"
                             f"{e.key}.yaml" if e.config else None,
                             "seeds": len(rs), "compared_model": compared_model(e)}
        for col in AAER_COLUMNS:
            s[col + "_mean"], s[col + "_std"] = _mean_std([r[col] for r in rs])
        pub = published_row(dataset, e, data)
        for k in METRICS:
            s[f"published_{k}_mean"] = None if pub is None else pub[k]["mean"]
            s[f"published_{k}_std"] = None if pub is None else pub[k]["std"]
        out.append(s)
    return out


def _pm(m, s, digits=2) -> str:
    return "n/a" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _pub(m, s, digits=2) -> str:
    return "-" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def summary_markdown(suite: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                     data: dict[str, Any]) -> str:
    dataset = SUITES[suite]
    src = data["source"]
    lines = [f"# aaer reproduce {suite}: aaer beside the FastAT Benchmark", "",
             f"{len(rows)} finished run(s). Accuracies in % of the test set, mean ± sample std "
             "over seeds. Columns marked \"FastAT Benchmark\" are the benchmark's published "
             f"numbers: {src['repository']} `{src['path']}` at commit {src['commit']} "
             "(3 seeds each; \"-\": the benchmark has no result for this method). aaer's "
             "\"compared\" model is the one the benchmark evaluates: the validation-selected "
             "model (`best.pth`) with weight averaging, the last epoch's without (PGD-AT).", ""]
    off = sorted({d for r in rows for d in r["deviations"]})
    if off:
        lines += ["**These runs do not follow the benchmark's protocol** (" + "; ".join(off) +
                  "): their numbers check the pipeline and are not comparable with the "
                  "benchmark's.", ""]
    lines += ["## Robust accuracy: aaer's compared model beside the benchmark", "",
              "| method | seeds | aaer model | " + " | ".join(
                  f"{t} (aaer) | {t} ({SOURCE})" for _, t, _ in ATTACKS) + " |",
              "|---|---|---|" + "---|---|" * len(ATTACKS)]
    for s in summary:
        w = s["compared_model"]
        cells = []
        for a, _, pk in ATTACKS:
            cells.append(_pm(s[f"{w}_{a}_mean"], s[f"{w}_{a}_std"]))
            cells.append(_pub(s[f"published_{pk}_mean"], s[f"published_{pk}_std"]))
        lines.append(f"| {s['method']} | {s['seeds']} | {w} | " + " | ".join(cells) + " |")
    lines += ["", "## Both of aaer's models", "",
              "evaluated: the model --eval-model names (the averaged weights with weight "
              "averaging, else the last); selected: the best on the validation split by "
              "PGD-10 accuracy (ties: clean), among the last and the averaged weights of each "
              "epoch (--select best-val-pgd).", "",
              "| method | seeds | " + " | ".join(f"{t} {w}" for w in MODELS
                                                    for _, t, _ in ATTACKS) + " |",
              "|---|---|" + "---|" * (len(MODELS) * len(ATTACKS))]
    for s in summary:
        cells = [_pm(s[f"{w}_{a}_mean"], s[f"{w}_{a}_std"]) for w in MODELS for a, _, _ in ATTACKS]
        lines.append(f"| {s['method']} | {s['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "",
              "aaer: device hours of training (results.json cost: every epoch with its "
              "validation, not the final evaluation), seconds of the epochs' training loops "
              "(validation excluded, as the benchmark's training time), peak memory during "
              "training (GiB: torch.cuda.max_memory_allocated on a GPU, as the benchmark's, "
              "the peak resident set on a CPU). Compare times only on the same GPU.", "",
              f"| method | seeds | device hours (aaer) | training s (aaer) | training s "
              f"({SOURCE}) | peak memory GiB (aaer) | GPU memory GiB ({SOURCE}) |",
              "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['seeds']} | "
            f"{_pm(s['device_hours_mean'], s['device_hours_std'], 4)} | "
            f"{_pm(s['train_loop_seconds_mean'], s['train_loop_seconds_std'], 1)} | "
            f"{_pub(s['published_total_training_time_mean'], s['published_total_training_time_std'], 1)} | "
            f"{_pm(s['peak_memory_gb_mean'], s['peak_memory_gb_std'])} | "
            f"{_pub(s['published_max_gpu_memory_mean'], s['published_max_gpu_memory_std'])} |")
    present = {s["method"] for s in summary}
    notes = [e for e in ENTRIES if e.label in present and e.note]
    lines += ["", "## Where aaer's run differs from the benchmark's", ""]
    lines += [f"- {e.label} ({e.key}): {e.note}" for e in notes]
    lines += [f"- every method: {d}" for where, d in COMMON_DIFFERENCES if dataset in where]
    lines += ["", "## Runs", "",
              "| run | seed | compared model: clean / PGD-50 / CR / AA | selected (model @ "
              "epoch) | device hours | device |", "|---|---|---|---|---|---|"]
    for r in rows:
        w = compared_model(BY_LABEL[r["label"]])
        acc = " / ".join("n/a" if r[f"{w}_{a}"] is None else f"{r[f'{w}_{a}']:.2f}"
                         for a, _, _ in ATTACKS)
        dh = "n/a" if r["device_hours"] is None else f"{r['device_hours']:.4f}"
        lines.append(f"| {r['run']} | {r['seed']} | {w}: {acc} (n={r[f'{w}_n']}) | "
                     f"{r['selected_at'] or 'n/a'} | {dh} | {r['device'] or 'n/a'} |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """``rows`` as CSV with the columns ``cols`` (a missing or None value: empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for s in rows:
        w.writerow({k: ("" if s.get(k) is None else s[k]) for k in cols})
    return buf.getvalue()


def summary_csv(summary: list[dict[str, Any]]) -> str:
    """One row per method: aaer's columns (accuracies in %), then the benchmark's
    (``published_<metric>_mean|std``, benchmark_data.json's names and units)."""
    cols = ["method", "aaer_method", "benchmark_config", "seeds", "compared_model"]
    cols += [f"{c}_{k}" for c in AAER_COLUMNS for k in ("mean", "std")]
    cols += [f"published_{m}_{k}" for m in METRICS for k in ("mean", "std")]
    return csv_text(summary, cols)


def write_summary(suite: str, runs, out_dir: str) -> dict[str, Any]:
    """summary.md and summary.csv of a FastAT suite's finished runs."""
    from aaer.runs import RunDir
    dataset = SUITES[suite]
    data = published()
    rows = [run_row(run, os.path.join(out_dir, run.name), dataset) for run in runs
            if RunDir(os.path.join(out_dir, run.name)).state == "finished"]
    summary = summarize(rows, dataset, data)
    atomic_write_bytes(os.path.join(out_dir, "summary.md"),
                       summary_markdown(suite, summary, rows, data).encode())
    atomic_write_bytes(os.path.join(out_dir, "summary.csv"), summary_csv(summary).encode())
    return {"rows": rows, "summary": summary}


def _extract_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m aaer.experiments.fastat extract",
                                description="write fastat_published.json from the FastAT "
                                "Benchmark's benchmark_data.json")
    p.add_argument("benchmark_data")
    p.add_argument("--commit", default=BENCHMARK_COMMIT)
    p.add_argument("--blob", default=None, help="git blob id of the file at that commit")
    p.add_argument("--out", default=PUBLISHED_FILE)
    a = p.parse_args(argv)
    with open(a.benchmark_data) as f:
        data = json.load(f)
    source = {"repository": BENCHMARK_REPO, "path": "benchmark_data.json",
              "commit": a.commit, "blob": a.blob,
              "generated_by": "python -m aaer.experiments.fastat extract benchmark_data.json"}
    text = json.dumps(extract_published(data, source), indent=1) + "\n"
    atomic_write_bytes(a.out, text.encode())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["extract"]:
        sys.exit("usage: python -m aaer.experiments.fastat extract <benchmark_data.json>")
    sys.exit(_extract_main(sys.argv[2:]))
