"""`aaer reproduce`: suites, dry-run in the seed's syntax, skip/resume, summary."""
import csv
import json
import os
import shlex

import numpy as np
import pytest

from aaer.experiments import reproduce as rp
from aaer.cli import main
from tests.helpers.files import write_idx_set

# The seed README's CIFAR-10 commands, verbatim.
SEED_CIFAR10 = """
python3 AAER.py --epoch 30 --clamp 1 --alpha 1.25 --epsilon 8 --lamda1 1.0 --lamda2 2.5 --lamda3 1.5 --out-dir CIFAR10_RS-AAER_8
python3 AAER.py --epoch 30 --clamp 0 --alpha 1.00 --epsilon 8 --lamda1 1.0 --lamda2 1.5 --lamda3 0.15 --out-dir CIFAR10_N-AAER_8
python3 AAER.py --epoch 30 --clamp 1 --alpha 1.25 --epsilon 12 --lamda1 1.0 --lamda2 5.0 --lamda3 2.75 --out-dir CIFAR10_RS-AAER_12
python3 AAER.py --epoch 30 --clamp 0 --alpha 1.00 --epsilon 12 --lamda1 1.0 --lamda2 5.0 --lamda3 0.55 --out-dir CIFAR10_N-AAER_12
python3 AAER.py --epoch 30 --clamp 1 --alpha 1.25 --epsilon 16 --lamda1 1.0 --lamda2 7.0 --lamda3 3.25 --out-dir CIFAR10_RS-AAER_16
python3 AAER.py --epoch 30 --clamp 0 --alpha 1.00 --epsilon 16 --lamda1 1.0 --lamda2 8.5 --lamda3 1.5 --out-dir CIFAR10_N-AAER_16
python3 AAER.py --epoch 30 --clamp 1 --alpha 1.25 --epsilon 32 --lamda1 1.0 --lamda2 5.75 --lamda3 1.5 --out-dir CIFAR10_RS-AAER_32
python3 AAER.py --epoch 30 --clamp 0 --alpha 1.00 --epsilon 32 --lamda1 1.0 --lamda2 2.75 --lamda3 0.75 --out-dir CIFAR10_N-AAER_32
"""


def _flags(argv):
    """Flag -> value of an argument list ('--epoch' spelled '--epochs')."""
    out, i = {}, 0
    while i < len(argv):
        k = argv[i].replace("--epoch", "--epochs") if argv[i] == "--epoch" else argv[i]
        if k.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[k] = argv[i + 1]
            i += 2
        else:
            out[k] = True
            i += 1
    return out


def test_aaer_cifar10_dry_run_matches_the_seed_commands(capsys):
    assert main(["reproduce", "aaer-cifar10", "--dry-run", "--out", "X"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 + 6 * 4                     # 8 seed commands + 6 baselines x 4 eps
    ours = {os.path.basename(_flags(shlex.split(l))["--out-dir"])[:-3]: _flags(shlex.split(l))
            for l in lines}
    for line in SEED_CIFAR10.strip().splitlines():
        seed = _flags(shlex.split(line)[2:])
        mine = ours[seed.pop("--out-dir")]
        for k, v in seed.items():
            assert float(mine[k]) == float(v), (k, v, mine[k])
        assert "--method" not in mine                  # the seed's --clamp picks the variant
        assert mine["--dataset"] == "cifar10" and mine["--seed"] == "0"
    assert ours["CIFAR10_GradAlign_16"]["--method"] == "gradalign"


def test_seeds_and_scale_multiply_and_override():
    runs = rp.build_runs("aaer-cifar100", seeds=3, scale="tiny")
    assert len(runs) == 3 * 32 and {r.seed for r in runs} == {0, 1, 2}
    f = _flags(runs[0].argv("o"))
    assert f["--epochs"] == "1" and f["--model"] == "small-cnn"
    assert runs[0].flags.count("--epochs") == 1        # the scale replaced the suite's 30


def test_bad_suite_inputs_are_refused(tmp_path, capsys):
    assert main(["reproduce", "nope", "--dry-run"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    bad = tmp_path / "grid.json"
    bad.write_text(json.dumps({"methods": ["rs-fgsm"], "eps": [8], "colour": "red"}))
    assert main(["reproduce", str(bad), "--dry-run"]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err
    assert main(["reproduce", "aaer-cifar10", "--seeds", "0", "--dry-run"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tiny_user_suite_end_to_end(tmp_path, capsys):
    data = tmp_path / "fmnist"
    write_idx_set(str(data), np.random.default_rng(0), n_train=96, n_test=32)
    grid = tmp_path / "grid.toml"
    grid.write_text('datasets = ["fashion-mnist"]\nmodels = ["small-cnn"]\n'
                    'methods = ["rs-fgsm", "rs-aaer"]\neps = [32]\nepochs = 1\n'
                    'flags = ["--batch-size", "32", "--eval-protocol", "quick", "--lr-max", "0.05"]\n')
    out = tmp_path / "suite"
    argv = ["reproduce", str(grid), "--seeds", "2", "--out", str(out), "--data-dir", str(data)]
    assert main(argv) == 0
    runs = sorted(d for d in os.listdir(out) if d.startswith("fashion-mnist"))
    assert len(runs) == 4
    for d in runs:
        assert os.path.exists(out / d / "results.json")
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["method"], r["seeds"]) for r in rows] == [("RS-AAER", "2"), ("RS-FGSM", "2")]
    for r in rows:
        assert 0.0 <= float(r["clean_mean"]) <= 1.0 and float(r["clean_std"]) >= 0.0
        assert "quick" in r["protocol"]
    md = (out / "summary.md").read_text()
    assert "| RS-FGSM | 32/255 | 2 |" in md and "CO rate" in md
    for plot in ("aae_count.png", "probe_accuracy.png", "by_method.png"):   # 2 seeds a method
        assert os.path.getsize(out / "report" / plot) > 1000
    assert os.path.getsize(out / "robust_vs_eps.png") > 1000
    # a second call skips the finished runs and rewrites the summary
    mtimes = {d: os.path.getmtime(out / d / "results.json") for d in runs}
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 finished run(s) skipped" in capsys.readouterr().out
    assert mtimes == {d: os.path.getmtime(out / d / "results.json") for d in runs}


def test_co_fixture_suite_and_co_flag_from_the_monitor(tmp_path):
    runs = rp.build_runs("co-fixture", seeds=2)
    from aaer.methods import METHODS
    # every method: the first table's five first, then the others as registered
    assert [r.label for r in runs[::2]][:5] == ["FGSM", "RS-FGSM", "N-FGSM", "RS-AAER", "N-AAER"]
    assert sorted(r.label for r in runs[::2]) == sorted(rp.METHOD_LABELS[m] for m in METHODS)
    f = _flags(runs[0].argv("o"))
    from aaer.experiments.demo import CO_FIXTURE
    assert f["--dataset"] == "fashion-mnist" and float(f["--epsilon"]) == CO_FIXTURE["epsilon"]
    assert "None" not in runs[0].flags
    assert int(f["--probe-n"]) > 0                      # the CO monitor is on
    from aaer.runs import Run, legacy_settings

    def flag(results, rows=()):
        r = Run("d", legacy_settings({}), {}, list(rows), results)
        return r.monitored(), r.co_epoch() if r.monitored() else None
    assert flag({"monitor": {"co_detected": True, "co_epoch": 3}}) == (True, 3)
    assert flag({"monitor": {"co_detected": False, "co_epoch": None}}) == (False, None)
    assert flag({}) == (None, None)                                  # not monitored
    # a run without a monitor summary: the metrics rows' co_flag fields
    rows = [{"epoch": 0, "co_flag": False}, {"epoch": 1, "co_flag": True, "co_epoch": 0}]
    assert flag({}, rows) == (True, 0)


def test_the_cifar10_fixture_suite(tmp_path):
    """co-fixture-cifar10: every method on the CIFAR-10 fixture's settings (its model, eps,
    epochs), on the JPEG copy beside the checkout; the tiny scale shrinks it."""
    from aaer.experiments.demo import CIFAR10_FIXTURE
    runs = rp.build_runs("co-fixture-cifar10", seeds=1, methods=["RS-FGSM", "RS-AAER"])
    assert [r.name for r in runs] == ["co-fixture-cifar10_RS-FGSM_s0",
                                      "co-fixture-cifar10_RS-AAER_s0"]
    f = _flags(runs[0].argv("o"))
    assert f["--model"] == CIFAR10_FIXTURE["model"] == "preactresnet18-w4"
    assert float(f["--epsilon"]) == 16 and f["--epochs"] == "15" and f["--dataset"] == "imagefolder"
    assert f["--data-dir"].endswith("cifar10-jpeg.zip")
    tiny = _flags(rp.build_runs("co-fixture-cifar10", seeds=1, scale="tiny")[0].argv("o"))
    assert tiny["--epochs"] == "2" and tiny["--n-train"] == "2000"


def test_summary_lists_each_runs_trajectory(tmp_path):
    runs = rp.build_runs("co-fixture", seeds=2)[2:4]                 # RS-FGSM, seeds 0 and 1
    probe = [(0.125, 10), (0.25, 40), (0.0, 3000), (0.0, 4000)]      # (probe PGD, AAE count)
    for run, co in zip(runs, (True, False)):
        d = tmp_path / run.name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"method": "rs-fgsm", "seed": run.seed,
                                                   "epsilon": 70.0}))
        rows = [{"epoch": e, "probe_pgd_acc": p, "probe_clean_acc": 0.5, "probe_fgsm_acc": 0.5,
                 "aae_count": a, "aae_fraction": a / 10000, "co_candidate": not co and e == 3}
                for e, (p, a) in enumerate(probe)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "results.json").write_text(json.dumps({
            "seconds_per_epoch": 20.25,
            "monitor": {"co_detected": co, "co_epoch": 2 if co else None, "probe": {
                "pgd_steps": 10, "pgd_alpha": 70 / 255 / 4, "source": "the first 500 test "
                "points", "seed": run.seed}},
            "evaluation": {"results": {"clean": {"acc": 0.5}, "pgd": {
                "acc": 0.0, "protocol": "quick", "steps": 10, "restarts": 1, "n": 1000,
                "alpha": 70 / 255 / 4}}}}))
    out = rp.write_summary("co-fixture", runs, str(tmp_path))
    assert out["rows"][0]["aae_at_best"] == 40 and out["rows"][0]["probe_pgd_best_epoch"] == 1
    md = (tmp_path / "summary.md").read_text()
    assert (f"| {runs[0].name} | 0 | 50.00 | 0.00 | 2 | 25.00 (1) -> 0.00 | "
            "10 / 40 / 4000 / 4000 (0.40) | 20.2 |") in md
    assert f"| {runs[1].name} | 1 | 50.00 | 0.00 | none (candidate at 3) |" in md
    assert "| RS-FGSM | 70/255 | 2 | 50.00 ± 0.00 | 0.00 ± 0.00 | n/a | 20.25 ± 0.00 | 0.50 (2) |" \
        in md


def test_toml_suites_without_a_toml_reader_say_what_to_do(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_toml(name, *args, **kwargs):
        if name in ("tomllib", "tomli"):
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    grid = tmp_path / "g.toml"
    grid.write_text('methods = ["rs-fgsm"]\neps = [8]\n')
    assert [r.name for r in rp.build_runs(str(grid), seeds=1)] == \
        ["cifar10_preactresnet18_RS-FGSM_8_s0"]
    monkeypatch.setattr(builtins, "__import__", no_toml)
    with pytest.raises(ValueError, match="Python >= 3.11 or the tomli package"):
        rp.build_runs(str(grid), seeds=1)


def test_slurm_executor_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    """Without Slurm commands on PATH, or without submitit: exit 2 and one line; nothing
    is submitted or written."""
    monkeypatch.setenv("PATH", str(tmp_path))                  # no sbatch, no squeue
    out = tmp_path / "o"
    argv = ["reproduce", "co-fixture", "--out", str(out), "--executor", "slurm"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs Slurm's sbatch, srun" in err and "login node" in err
    assert not out.exists()
    import sys
    monkeypatch.setitem(sys.modules, "submitit", None)
    for name in ("sbatch", "srun", "squeue", "scontrol"):     # stand-ins that are never run
        (tmp_path / name).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / name).chmod(0o755)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs the submitit package" in err and "pip install 'aaer[slurm]'" in err
