"""`aaer reproduce fastat-cifar10 | fastat-cifar100 | fastat-tinyimagenet`: the FastAT
Benchmark's protocol, one line per method x seed, and its published numbers beside aaer's.

The expected values below are transcribed from fzjcdt/FastAT_Benchmark at b99c0de
(configs/<dataset>/*.yaml and benchmark_data.json), independently of the suite's table."""
import csv
import json
import math
import os
import shlex
import statistics

import numpy as np
import pytest

from aaer.cli import main
from aaer.config.flags import request_from_argv
from aaer.config.resolve import resolve
from aaer.config.schema import FLAT
from aaer.errors import UsageError
from aaer.experiments import fastat
from aaer.experiments import reproduce as rp
from aaer.runs import RunDir
from tests.helpers.files import write_cifar10

# settings of aaer's main line that a branch may lack (the label-smoothing and
# bring-your-own-model work): lines are resolved without them there
LATER = {"--label-smoothing": "label_smoothing", "--normalization": "normalization"}
LACKING = {flag for flag, name in LATER.items() if name not in FLAT}

# the benchmark's method configs (configs/cifar10/*.yaml but common.yaml) -> aaer's method
BENCHMARK_METHODS = {
    "elle": "elle", "fgsm_at": "fgsm", "fgsm_cuap": "fgsm-cuap", "fgsm_fuap": "fgsm-fuap",
    "fgsm_mep_cs": "fgsm-mep-cs", "fgsm_pco": "fgsm-pco", "fgsm_pgi": "fgsm-pgi",
    "fgsm_rs": "rs-fgsm", "fgsm_rs_cs": "fgsm-rs-cs", "fgsm_uap": "fgsm-uap",
    "free_at": "free", "gat": "gat", "grad_align": "gradalign", "liet": "liet",
    "n_aaer": "n-aaer", "n_fgsm": "n-fgsm", "nu_at": "nuat", "pgd_at": "pgd",
    "pgd_at_wa": "pgd", "rs_aaer": "rs-aaer", "ssat": "ssat", "zero_grad": "zerograd"}
AAER_ONLY = {"v-lap", "r-lap", "n-lap", "multigrad"}
# methods whose own loss smooths the labels: they refuse --label-smoothing
OWN_SMOOTHING = {"fgsm-pgi", "fgsm-mep-cs", "fgsm-rs-cs", "fgsm-pco", "fgsm-uap", "fgsm-cuap",
                 "fgsm-fuap", "liet"}
# fast_at/aaer.py computes plain CrossEntropyLoss (its label-smoothed criterion is unused)
NO_SMOOTHING = {"n-aaer", "rs-aaer"}


def flags_of(argv):
    """flag -> list of its values (a flag may repeat: --set)."""
    out = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.setdefault(argv[i], []).append(argv[i + 1])
            i += 2
        else:
            out.setdefault(argv[i], []).append(True)
            i += 1
    return out


def one(flags, name):
    values = flags[name]
    assert len(values) == 1, (name, values)
    return values[0]


def resolved(run):
    """The run as `aaer train` resolves its suite line (without the flags of LACKING)."""
    argv = run.argv("out")[1:]
    for flag in LACKING & set(argv):
        i = argv.index(flag)
        argv = argv[:i] + argv[i + 2:]
    return resolve(request_from_argv(argv))


@pytest.mark.parametrize("suite, dataset, model, val_n", [
    ("fastat-cifar10", "cifar10", "resnet18", "1000"),
    ("fastat-cifar100", "cifar100", "resnet18", "1000"),
    ("fastat-tinyimagenet", "tinyimagenet", "preactresnet18-fastat", "2000")])
def test_dry_run_is_every_method_times_seed_under_the_protocol(suite, dataset, model, val_n):
    runs = rp.build_runs(suite, rp.default_seeds(suite))
    lines = rp.dry_run_lines(runs, "OUT")
    methods = {}
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["aaer", "train"]
        f = flags_of(argv[2:])
        for name, values in f.items():            # every flag once, but --set
            assert name == "--set" or len(values) == 1, (line, name)
        methods.setdefault(one(f, "--method"), []).append(int(one(f, "--seed")))
        assert one(f, "--dataset") == dataset and one(f, "--model") == model
        assert one(f, "--normalization") == "none"
        assert one(f, "--epochs") == ("200" if one(f, "--method") == "free" else "100")
        assert one(f, "--batch-size") == "128" and one(f, "--lr-max") == "0.1"
        assert one(f, "--momentum") == "0.9" and float(one(f, "--weight-decay")) == 5e-4
        assert one(f, "--lr-schedule") == "onecycle" and one(f, "--epsilon") == "8"
        assert one(f, "--val-n") == val_n and one(f, "--eval-protocol") == "fastat"
        assert one(f, "--select") == "best-val-pgd"
        assert one(f, "--out-dir").startswith("OUT/")
        m = one(f, "--method")
        if m in OWN_SMOOTHING or m in NO_SMOOTHING:
            assert "--label-smoothing" not in f, line
        else:
            assert one(f, "--label-smoothing") == "0.4", line
        pgd_at = one(f, "--out-dir").endswith(("_pgd_at_s0", "_pgd_at_s1", "_pgd_at_s2"))
        assert ("--weight-average" not in f) if pgd_at else one(f, "--weight-average") == "0.9995"
    assert len(lines) == 3 * 26
    assert set(methods) == set(BENCHMARK_METHODS.values()) | AAER_ONLY
    assert sorted(methods["pgd"]) == [0, 0, 1, 1, 2, 2]        # pgd_at and pgd_at_wa
    assert all(sorted(s) == [0, 1, 2] for m, s in methods.items() if m != "pgd")
    assert {e.key: e.method for e in fastat.ENTRIES if e.config} == BENCHMARK_METHODS


# per data set, what the benchmark's method configs set, as aaer's resolved settings
CONFIGS = {
    # fgsm_pgi.yaml: epochs_reset 40, momentum_decay 0.3, lamda 10 (alpha = eps, hard-coded)
    "fgsm_pgi": {"epochs_reset": 40, "momentum_decay": 0.3, "lamda": 10.0, "alpha": 1.0},
    # fgsm_mep_cs.yaml: factor 0.6, lamda 10, gamma 0.03, ratio 1, stride 1, momentum_decay
    # 0.3, w2 1.0, delta_init random (epochs_reset hard-coded 40)
    "fgsm_mep_cs": {"factor": 0.6, "lamda": 10.0, "gamma": 0.03, "ratio": 1.0, "stride": 1.0,
                    "momentum_decay": 0.3, "w2": 1.0, "delta_init": "random",
                    "epochs_reset": 40},
    "fgsm_rs_cs": {"factor": 0.6, "gamma": 0.03, "ratio": 1.0, "stride": 1.0, "w2": 1.0},
    "fgsm_pco": {"factor": 0.6, "beta": 1.5, "lamda": 10.0, "delta_init": "random"},
    # zero_grad.yaml: q_val 0.35 (CIFAR-100 0.45), fgsm_init random, fgsm_alpha 2.0
    "zero_grad": {"q": {"cifar10": 0.35, "cifar100": 0.45, "tinyimagenet": 0.35},
                  "noise": "rs", "alpha": 2.0},
    "n_aaer": {"lamda1": 1.0, "lamda2": 1.5, "lamda3": 0.15, "clamp": 0, "alpha": 1.0,
               "delta_init": "random"},
    "rs_aaer": {"lamda1": 1.0, "lamda2": {"cifar10": 2.5, "cifar100": 3.5, "tinyimagenet": 3.5},
                "lamda3": 1.5, "clamp": 1, "alpha": 1.25, "delta_init": "random"},
    # elle.yaml: lin_reg 1.0 (constant), fgsm_init random, fgsm_alpha 1.25
    "elle": {"lamda": 1.0, "noise": "rs", "alpha": 1.25},
    # grad_align.yaml: grad_align_cos_lambda 0.2 (its alpha key is unused: alpha = eps)
    "grad_align": {"lamda": 0.2, "alpha": 1.0, "noise": "zero"},
    # free_at.yaml: m 4, total_epoch 200 -> 200 // 4 = 50 epochs
    "free_at": {"replays": 4, "alpha": 1.0},
    # nu_at.yaml: nuc_max 4.0, raised by nuc_max / total_epoch after every epoch
    "nu_at": {"nuc_max": 4.0, "ramp": 1.0},
    # gat.yaml: l2_reg 10, x4 after epoch 85 (fast_at/gat.py)
    "gat": {"l2_reg": 10.0, "mul": 4.0, "mul_at": 0.86},
    # ssat.yaml: c 3, alpha 10/255
    "ssat": {"c": 3, "alpha": 1.25},
    # PGD-10 step 2/255 (fast_at/pgd_at.py; torchattacks attacks the eval-mode model)
    "pgd_at": {"steps": 10, "step255": 2.0, "attack_mode": "eval"},
    "pgd_at_wa": {"steps": 10, "step255": 2.0, "attack_mode": "eval"},
    # uap_eps 10/255 = 1.25 eps, momentum_decay 0.3, lamda 10, label smoothing 0.4
    "fgsm_uap": {"lamda": 10.0, "uap_scale": 1.25, "momentum_decay": 0.3,
                 "label_smoothing": 0.4},
    "fgsm_cuap": {"lamda": 10.0, "uap_scale": 1.25, "momentum_decay": 0.3,
                  "label_smoothing": 0.4},
    # fgsm_fuap.yaml: uap_num 50 (CIFAR-100 and Tiny-ImageNet 200)
    "fgsm_fuap": {"lamda": 10.0, "uap_scale": 1.25, "momentum_decay": 0.3,
                  "label_smoothing": 0.4,
                  "uap_num": {"cifar10": 50, "cifar100": 200, "tinyimagenet": 200}},
    # liet.yaml: lambda 100 (CIFAR-100 200), label_smoothing 0.6 (CIFAR-100 0.8)
    "liet": {"lamda": {"cifar10": 100.0, "cifar100": 200.0, "tinyimagenet": 100.0},
             "label_smoothing": {"cifar10": 0.6, "cifar100": 0.8, "tinyimagenet": 0.6},
             "min_mask_ratio": 0.1, "max_mask_ratio": 0.5, "li_update": 20},
}


@pytest.mark.parametrize("suite", list(fastat.SUITES))
def test_each_method_trains_with_its_config_values(suite):
    """Every seed-0 line resolves as `aaer train` would, to the hyper-parameters its config
    file sets (a preset or published table of aaer's would otherwise win: FGSM-PGI's
    official CIFAR-100 reset is 10, GradAlign's peak lr 0.3, NuAT's nuc_max 4.5)."""
    dataset = fastat.SUITES[suite]
    for run in rp.build_runs(suite, 1):
        cfg = resolved(run)
        key = run.name[len(dataset) + 1:-3]
        hp = {**{k: cfg.get(p) for k, p in (("alpha", "method.alpha"),
                                            ("delta_init", "method.delta_init"),
                                            ("clamp", "method.clamp"),
                                            ("lamda1", "method.lamda1"),
                                            ("lamda2", "method.lamda2"),
                                            ("lamda3", "method.lamda3"))},
              **cfg.method.options}
        for k, want in CONFIGS.get(key, {}).items():
            want = want[dataset] if isinstance(want, dict) else want
            assert hp[k] == want, (suite, key, k, hp[k], want)
        o = cfg.optim
        assert o.epochs == (50 if key == "free_at" else 100), key
        assert (o.lr_max, o.momentum, o.weight_decay, o.batch_size) == (0.1, 0.9, 5e-4, 128)
        assert (o.lr_schedule, o.lr_peak) == ("onecycle", 0.3)
        assert o.weight_average == (0.0 if key == "pgd_at" else 0.9995)
        assert cfg.evaluation.model == ("last" if key == "pgd_at" else "averaged")
        assert cfg.evaluation.select == "best-val-pgd" and cfg.evaluation.protocol == "fastat"
        assert cfg.data.val_n == fastat.VAL_N[dataset]
        if not LACKING:
            assert cfg.model.normalization == "none"
            own = cfg.method.name in OWN_SMOOTHING | NO_SMOOTHING
            assert cfg.get(FLAT["label_smoothing"][0]) == (0.0 if own else 0.4)
        assert cfg.data.n_train is None and cfg.evaluation.n_eval is None
        assert cfg.eps == 8 / 255


def test_scales_seeds_and_the_tiny_alias(capsys):
    assert rp.default_seeds("fastat-cifar100") == 3 and rp.default_seeds("aaer-cifar10") == 1
    assert rp.default_seeds("fastat-cifar10", "tiny") == 1
    tiny = rp.build_runs("fastat-cifar10", 1, "tiny")
    assert [r.label for r in tiny] == ["FGSM-RS", "FGSM-PGI", "Free-AT", "PGD-AT", "V-LAP"]
    for r in tiny:
        f = flags_of(r.argv("o"))
        assert (one(f, "--epochs"), one(f, "--n-train"), one(f, "--val-n")) == ("1", "256", "64")
        assert one(f, "--model") == "small-cnn" and one(f, "--n-eval") == "32"
        assert one(f, "--eval-protocol") == "fastat"
    small = rp.build_runs("fastat-tinyimagenet", 1, "small")
    assert len(small) == 26 and one(flags_of(small[0].argv("o")), "--epochs") == "5"
    assert main(["reproduce", "fastat-cifar10", "--tiny", "--scale", "small", "--dry-run"]) == 2
    assert "--tiny is --scale tiny, but --scale small was given too" in capsys.readouterr().err


# -- the published numbers ---------------------------------------------------------------

def test_published_numbers_are_the_benchmarks():
    data = fastat.published()
    src = data["source"]
    assert src["repository"] == "fzjcdt/FastAT_Benchmark" and src["path"] == "benchmark_data.json"
    assert src["commit"] == "b99c0de60e57128254234f2d79719b74792a4037"
    res = data["results"]
    assert set(res) == {"cifar10", "cifar100", "tiny-imagenet"}
    with_results = set(BENCHMARK_METHODS) - {"rs_aaer"}
    assert set(res["cifar10"]) == set(res["cifar100"]) == with_results
    assert set(res["tiny-imagenet"]) == with_results - {"n_aaer"}
    # values read from benchmark_data.json (and docs/methods/fastat-benchmark.md)
    pgi = res["cifar10"]["fgsm_pgi"]
    # per seed: the logged 4-decimal fractions times 100 (79.86999999999999 for 0.7987)
    assert [round(pgi["seeds"][s]["clean_acc"], 2) for s in "012"] == [79.87, 80.26, 79.03]
    assert pgi["clean_acc"] == {"mean": 79.72, "std": 0.6285698051927032}
    assert pgi["autoattack_acc"]["mean"] == 49.89333333333333
    assert pgi["total_training_time"]["mean"] == 2646.6533230145774
    assert pgi["max_gpu_memory"] == {"mean": 2.54, "std": 0.0}
    for m, aa in (("fgsm_pco", 48.52), ("fgsm_mep_cs", 45.35), ("fgsm_rs_cs", 48.64),
                  ("n_aaer", 47.38), ("pgd_at_wa", 50.49)):
        assert round(res["cifar10"][m]["autoattack_acc"]["mean"], 2) == aa, m
    assert res["cifar100"]["fgsm_pgi"]["pgd_50_acc"]["mean"] == 31.85
    assert res["tiny-imagenet"]["fgsm_pgi"]["cr_attack_acc"]["mean"] == 19.52
    # every aggregate is the mean and sample std of its seeds' values
    for ds, methods in res.items():
        for m, e in methods.items():
            assert set(e["seeds"]) == {"0", "1", "2"}, (ds, m)
            for k in fastat.METRICS:
                v = [e["seeds"][s][k] for s in "012"]
                assert math.isclose(e[k]["mean"], statistics.mean(v), abs_tol=1e-9), (ds, m, k)
                assert math.isclose(e[k]["std"], statistics.stdev(v), abs_tol=1e-9), (ds, m, k)


def test_extract_writes_the_same_file(tmp_path):
    """`python -m aaer.experiments.fastat extract` rebuilds the shipped file from a
    benchmark_data.json (here one rebuilt from the shipped seeds and aggregates)."""
    data = fastat.published()
    bench = {ds: {m: {"method": m, "dataset": ds, "seeds": {s: {**v, "seed": int(s),
                                                                 "train_acc_list": []}
                                                             for s, v in e["seeds"].items()},
                      **{k: e[k] for k in fastat.METRICS}} for m, e in methods.items()}
             for ds, methods in data["results"].items()}
    (tmp_path / "benchmark_data.json").write_text(json.dumps(bench))
    out = tmp_path / "published.json"
    assert fastat._extract_main([str(tmp_path / "benchmark_data.json"), "--out", str(out),
                                 "--blob", data["source"]["blob"]]) == 0
    assert json.loads(out.read_text()) == data
    assert out.read_text() == open(fastat.PUBLISHED_FILE).read()


# -- the summary --------------------------------------------------------------------------

ACC = {  # made-up accuracies (fractions): (evaluated, selected) per seed
    "FGSM-PGI": [((0.80, 0.55, 0.50, 0.49), (0.81, 0.56, 0.51, 0.50)),
                 ((0.82, 0.57, 0.52, 0.51), (0.79, 0.54, 0.49, 0.48))],
    "PGD-AT": [((0.70, 0.45, 0.40, 0.39), (0.72, 0.47, 0.42, 0.41)),
               ((0.74, 0.47, 0.42, 0.41), (0.70, 0.45, 0.40, 0.39))],
    "V-LAP": [((0.60, 0.30, 0.25, 0.24), (0.61, 0.31, 0.26, 0.25)),
              ((0.62, 0.32, 0.27, 0.26), (0.63, 0.33, 0.28, 0.27))]}


def make_finished_run(out, run, acc, *, deviate=False):
    """A finished run directory as `aaer train` leaves it: config.json from the suite line
    itself (resolved), metrics.jsonl, results.json with both evaluations and the cost."""
    cfg = resolved(run)
    if deviate:
        cfg.optim.epochs = 1
    d = RunDir(os.path.join(out, run.name))
    d.start()
    d.write_config(cfg, {})
    rows = [{"epoch": e, "seconds": 10.0 + e + run.seed, "lr": 0.1, "train_loss": 1.0,
             "train_acc": 0.5, "n": 49000} for e in range(2)]
    d.write_metrics(rows)

    def evaluation(a):
        res = {k: {"acc": v, "n": 10000, "protocol": "fastat"}
               for k, v in zip(("clean", "pgd", "cr", "autoattack"), a)}
        res["pgd"].update(steps=50, restarts=1, alpha=2 / 255, selection="worst")
        return {"protocol": {"name": "fastat"}, "eps": 8 / 255, "n": 10000, "results": res}
    d.write_results({
        "evaluation": evaluation(acc[0]), "evaluation_selected": evaluation(acc[1]),
        "validation": {"selected": {"epoch": 87, "model": "averaged"}},
        "cost": {"train_seconds": 100.0, "device_hours": 0.5 + 0.25 * run.seed,
                 "device_name": "NVIDIA H100", "peak_memory_gb": 2.0 + run.seed}})


def test_summary_puts_the_published_numbers_beside_aaers(tmp_path):
    runs = [r for r in rp.build_runs("fastat-cifar10", 2) if r.label in ACC]
    for r in runs:
        make_finished_run(str(tmp_path), r, ACC[r.label][r.seed])
    out = rp.write_summary("fastat-cifar10", runs, str(tmp_path))
    assert [s["method"] for s in out["summary"]] == ["FGSM-PGI", "PGD-AT", "V-LAP"]
    md = (tmp_path / "summary.md").read_text()
    assert "do not follow the benchmark's protocol" not in md
    assert "| AA (aaer) | AA (FastAT Benchmark, benchmark_data.json) |" in md
    # FGSM-PGI: weight averaging on, so the selected model beside the benchmark's best.pth;
    # selected clean 81, 79 -> 80.00 ± 1.41; AA 50, 48 -> 49.00 ± 1.41; benchmark 79.72 ±
    # 0.63, PGD-50 55.82 ± 0.21, CR 49.89 ± 0.12, AA 49.89 ± 0.08
    assert ("| FGSM-PGI | 2 | selected | 80.00 ± 1.41 | 79.72 ± 0.63 | 55.00 ± 1.41 | "
            "55.82 ± 0.21 | 50.00 ± 1.41 | 49.89 ± 0.12 | 49.00 ± 1.41 | 49.89 ± 0.08 |") in md
    # PGD-AT: no weight averaging: the last epoch's (evaluated) model, as the benchmark
    pub = fastat.published()["results"]["cifar10"]["pgd_at"]
    assert (f"| PGD-AT | 2 | evaluated | 72.00 ± 2.83 | {pub['clean_acc']['mean']:.2f} ± "
            f"{pub['clean_acc']['std']:.2f} | 46.00 ± 1.41 |") in md
    assert "| V-LAP | 2 | selected | 62.00 ± 1.41 | - | 32.00 ± 1.41 | - | 27.00 ± 1.41 | - |" in md
    # cost: device hours 0.5 and 0.75; training loops 10+11 and 11+12 s; memory 2 and 3 GiB
    assert ("| FGSM-PGI | 2 | 0.6250 ± 0.1768 | 22.0 ± 1.4 | 2646.7 ± 52.6 | 2.50 ± 0.71 | "
            "2.54 ± 0.00 |") in md
    assert "- FGSM-PGI (fgsm_pgi): its own label smoothing" in md
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert float(rows["FGSM-PGI"]["published_autoattack_acc_mean"]) == 49.89333333333333
    assert float(rows["FGSM-PGI"]["selected_autoattack_mean"]) == pytest.approx(49.0)
    assert float(rows["PGD-AT"]["evaluated_clean_mean"]) == pytest.approx(72.0)
    assert rows["PGD-AT"]["compared_model"] == "evaluated"
    assert rows["V-LAP"]["published_clean_acc_mean"] == "" and rows["V-LAP"]["benchmark_config"] == ""
    assert rows["FGSM-PGI"]["benchmark_config"] == "configs/cifar10/fgsm_pgi.yaml"


def test_summary_says_when_runs_leave_the_protocol(tmp_path):
    run = [r for r in rp.build_runs("fastat-cifar10", 1) if r.label == "FGSM-PGI"][0]
    make_finished_run(str(tmp_path), run, ACC["FGSM-PGI"][0], deviate=True)
    rp.write_summary("fastat-cifar10", [run], str(tmp_path))
    md = (tmp_path / "summary.md").read_text()
    assert ("**These runs do not follow the benchmark's protocol** (--epochs 1 (protocol "
            "100)): their numbers check the pipeline") in md
    assert "| 79.72 ± 0.63 |" in md                      # the published column is still there


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(bool(LACKING), reason="needs --label-smoothing and --normalization "
                    "(aaer's main line); run after merging")
def test_tiny_suite_end_to_end(tmp_path, capsys):
    """The whole pipeline at --tiny on a made-up CIFAR-10 of 320 + 32 images: every
    command line of the tiny suite trains, validates, selects and runs the fastat
    evaluation; the summary stands beside the published numbers and says the runs left
    the protocol."""
    data = tmp_path / "cifar10"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=64, n_test=32)
    out = tmp_path / "suite"
    argv = ["reproduce", "fastat-cifar10", "--tiny", "--out", str(out), "--data-dir",
            str(data), "--jobs", "2"]
    assert main(argv + ["--dry-run"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(fastat.TINY)
    # two of the tiny suite's methods (the pipeline is the same for each; CI's time is not):
    # one with label smoothing and weight averaging, one without either (PGD-AT)
    argv += ["--methods", "FGSM-RS,PGD-AT"]
    assert main(argv) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert list(rows) == ["FGSM-RS", "PGD-AT"]
    for r in rows.values():
        assert r["seeds"] == "1" and 0 <= float(r["selected_autoattack_mean"]) <= 100
        assert float(r["device_hours_mean"]) > 0
    assert float(rows["FGSM-RS"]["published_autoattack_acc_mean"]) == \
        fastat.published()["results"]["cifar10"]["fgsm_rs"]["autoattack_acc"]["mean"]
    md = (out / "summary.md").read_text()
    assert "do not follow the benchmark's protocol" in md and "--epochs 1 (protocol 100)" in md


def test_methods_picks_runs_of_a_suite_by_label():
    """--methods keeps the runs of the named methods (labels as the summary shows them, any
    case) and refuses a label the suite does not have, naming the valid ones."""
    from aaer.experiments.reproduce import build_runs
    runs = build_runs("fastat-cifar10", 2, methods=["fgsm-rs", "LIET"])
    assert sorted({r.label for r in runs}) == ["FGSM-RS", "LIET"] and len(runs) == 4
    with pytest.raises(UsageError, match=r"--methods nope: not in suite fastat-cifar10; "
                                         r"valid: .*FGSM-PGI"):
        build_runs("fastat-cifar10", 1, methods=["nope"])
