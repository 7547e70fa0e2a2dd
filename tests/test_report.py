"""aaer report: report.md numbers and protocols, the PNG plots, output locations, errors,
TensorBoard event files (read back with tensorboard's own reader) and the CLI."""
import json
import os

import numpy as np
import pytest

from aaer.cli import main
from aaer.reporting.report import load_run, write_report
from aaer.runs import Run, legacy_settings
from tests.helpers.run_dirs import CO_RUN, EVAL, OK_RUN, make_run


def run_of(path, method, seed, rows, results=None, label=""):
    """A Run in memory, for the plot helpers."""
    return Run(path, legacy_settings({"method": method, "seed": seed}), {}, rows, results,
               label=label)


def scalars(log_dir):
    """tag -> [(step, value)] of the event files in log_dir (TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(log_dir)
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

@pytest.fixture
def two_runs(tmp_path):
    a = make_run(str(tmp_path / "runs" / "rs-fgsm"), "rs-fgsm", CO_RUN, EVAL)
    b = make_run(str(tmp_path / "runs" / "rs-aaer"), "rs-aaer", OK_RUN)
    return a, b


def _colour_pixels(path, rgb):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)[..., :3]
    target = np.array(rgb) / 255
    return int((np.abs(img - target).max(axis=-1) < 0.02).sum())


def test_report_numbers_protocols_and_co(two_runs, tmp_path):
    rep = write_report(list(two_runs))
    out = str(tmp_path / "runs")                          # the runs' common parent
    assert rep["report"] == os.path.join(out, "report.md")
    md = open(rep["report"]).read()
    assert ("| rs-fgsm | 0.7800 | 0.8000 | 0.0040 | 0.3100 (2) | 4 | 300 → max 5200 → 5200 | "
            "probe: PGD-10-1 step 19.12/255 and FGSM on the first 500 test points, eval mode, "
            "seed 3 |") in md
    assert "| rs-aaer | 0.6600 | 0.3700 | 0.2800 | 0.2800 (5) | none | 300 → max 300 → 160 |" in md
    assert ("| rs-fgsm | 0.8100 | 0.5200 | 0.4567 | lineage, PGD-50-10 step 2/255 (worst "
            "restart rule), FGSM zero start, eps 8/255, n=10000, seed 0 |") in md
    assert ("rs-fgsm: **CO at epoch 4**: probe PGD accuracy 0.3100 at epoch 2 -> 0.0500, while "
            "FGSM accuracy 0.3500 -> 0.7000; clean 0.7800. Response: warn. "
            "Flagged in 2 probes in all.") in md
    assert "rs-aaer: no CO flagged (rule: the rule text)." in md
    assert "| rs-fgsm | rs-fgsm (alpha 1.25, clamp 1) | fashion-mnist (10000 train) |" in md
    assert "| 4 | " in md and "| 0.0500 | CO |" in md      # the per-epoch table marks CO
    for name in ("probe_accuracy.png", "aae_count.png", "lr.png"):
        path = os.path.join(out, name)
        assert path in rep["plots"] and f"]({name})" in md
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        # one line per run, in tab10's first two colours
        assert _colour_pixels(path, (31, 119, 180)) > 50, name
        assert _colour_pixels(path, (255, 127, 14)) > 50, name


def test_single_run_report_goes_into_the_run(two_runs):
    rep = write_report([two_runs[1]])
    assert rep["report"] == os.path.join(two_runs[1], "report.md")
    assert sorted(os.listdir(two_runs[1])) == ["aae_count.png", "config.json", "lr.png",
                                               "metrics.jsonl", "probe_accuracy.png",
                                               "report.md", "results.json"]


def test_same_names_are_told_apart_and_unfinished_runs_reported(tmp_path):
    a = make_run(str(tmp_path / "x" / "run"), "rs-fgsm", CO_RUN)
    b = make_run(str(tmp_path / "y" / "run"), "fgsm", OK_RUN)
    os.remove(os.path.join(b, "results.json"))             # still training
    rep = write_report([a, b], str(tmp_path / "out"))
    assert [r.label for r in rep["runs"]] == [os.path.join("x", "run"), os.path.join("y", "run")]
    md = open(rep["report"]).read()
    assert "| unfinished |" in md and "| 6/6 |" in md


def test_bad_run_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_run(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no finished epoch"):
        load_run(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="at least one run"):
        write_report([])


def test_tensorboard_events_round_trip(two_runs, tmp_path):
    rep = write_report(list(two_runs), str(tmp_path / "rep"), tensorboard=True)
    tb = rep["tensorboard"]
    assert sorted(os.listdir(tb)) == ["rs-aaer", "rs-fgsm"]
    files = os.listdir(os.path.join(tb, "rs-fgsm"))
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")
    got = scalars(os.path.join(tb, "rs-fgsm"))
    assert [st for st, _ in got["probe/pgd_acc"]] == list(range(6))
    assert [v for _, v in got["probe/pgd_acc"]] == pytest.approx(CO_RUN["pgd"], abs=1e-7)
    assert [v for _, v in got["aae/count"]] == CO_RUN["aae"]
    assert [v for _, v in got["co/flag"]] == [0, 0, 0, 0, 1, 1]
    # a second report replaces the run's event file instead of adding one
    write_report(list(two_runs), str(tmp_path / "rep"), tensorboard=True)
    assert len(os.listdir(os.path.join(tb, "rs-fgsm"))) == 1


def test_cli_report(two_runs, tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["report", *two_runs, "--out", out, "--tensorboard"]) == 0
    text = capsys.readouterr().out
    assert "rs-fgsm: CO at epoch 4" in text and f"report: {out}/report.md" in text
    assert f"tensorboard --logdir {out}/tensorboard" in text
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_line_styles_colour_by_method_when_seeds_repeat():
    from aaer.reporting.report import LINE_STYLES, legend_title, line_styles
    colors = ["c0", "c1", "c2"]
    two = [run_of("a", "rs-fgsm", 0, [], label="A"), run_of("b", "rs-aaer", 0, [], label="B")]
    assert line_styles(two, colors) == [("c0", "-", "A"), ("c1", "-", "B")]
    assert legend_title(two, line_styles(two, colors)) is None
    grid = [run_of(f"{m}{s}", m, s, []) for m in ("fgsm", "rs-aaer") for s in (0, 1, 2)]
    st = line_styles(grid, colors)
    assert [c for c, _, _ in st] == ["c0"] * 3 + ["c1"] * 3
    assert [ls for _, ls, _ in st] == list(LINE_STYLES[:3]) * 2
    assert [lab for _, _, lab in st] == ["fgsm", None, None, "rs-aaer", None, None]
    assert legend_title(grid, st) == "line: seed 0 solid, 1 dashed, 2 dotted"


def test_rollback_runs_are_a_group_of_their_own():
    from aaer.reporting.report import line_styles, method_groups
    runs = [Run(f"{p}{s}", legacy_settings({"method": "rs-fgsm", "seed": s, "on_co": p,
                                            "probe_n": 500}), {}, [])
            for p in ("warn", "rollback") for s in (0, 1)]
    assert {g: [r.path for r in rs] for g, rs in method_groups(runs).items()} == {
        "rs-fgsm": ["warn0", "warn1"], "rs-fgsm --on-co rollback": ["rollback0", "rollback1"]}
    st = line_styles(runs, ["c0", "c1"])
    assert [(c, lab) for c, _, lab in st] == [("c0", "rs-fgsm"), ("c0", None),
                                               ("c1", "rs-fgsm --on-co rollback"), ("c1", None)]


def test_co_text_says_what_a_rollback_restored(tmp_path):
    from aaer.reporting.report import co_text
    d = make_run(str(tmp_path / "rb"), "fgsm", CO_RUN)
    with open(os.path.join(d, "results.json")) as f:
        res = json.load(f)
    res["monitor"].update(
        rollbacks=[{"epoch": 5, "restored_from": {"epoch": -1, "step": 0, "pgd": None},
                    "param": "alpha", "old": 1.0,
                    "new": 0.75}],
        stopped={"epoch": 5, "restored_from": None},
        outcome="not rescued: CO again after 1 rollback(s); stopped with its weights in CO")
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(res, f)
    run = load_run(d)
    run.label = "rb"
    assert co_text(run).endswith(
        "Rollback at epoch 5: restored the start of training, alpha 1 → 0.75. Stopped at "
        "epoch 5 with its weights in CO (no probe before CO to go back to). Outcome: not "
        "rescued: CO again after 1 rollback(s); stopped with its weights in CO.")


def test_seed_band_and_by_method_plot(tmp_path):
    from aaer.reporting.report import seed_band
    rows = lambda vals: [{"epoch": e, "probe_pgd_acc": v} for e, v in enumerate(vals)]
    a = run_of("a", "rs-fgsm", 0, rows([0.25, 0.5, 0.0]), results={"monitor": {"co_epoch": 2}})
    b = run_of("b", "rs-fgsm", 1, rows([0.75, 0.25]))                      # one epoch fewer
    xs, mean, lo, hi, co = seed_band([a, b], "probe_pgd_acc")
    assert (xs, mean, lo, hi) == ([0, 1], [0.5, 0.375], [0.25, 0.25], [0.75, 0.5])
    assert co == []                                  # epoch 2 is not shared by both runs
    assert seed_band([a, b], "probe_pgd_acc", shared=False) == \
        ([0, 1, 2], [0.5, 0.375, 0.0], [0.25, 0.25, 0.0], [0.75, 0.5, 0.0], [2])
    assert seed_band([a], "probe_pgd_acc")[4] == [2]
    assert seed_band([a, b], "aae_count") is None
    a.results["monitor"]["rollbacks"] = [{"epoch": 2}]     # its CO epochs were discarded
    assert a.rolled_back() and seed_band([a], "probe_pgd_acc")[4] == []


def test_train_writes_tensorboard_events_live(tmp_path):
    """`--tensorboard` writes each epoch (and each probe, by optimiser step) while the run
    trains: the events are there after every epoch, read with TensorBoard's own reader."""
    from aaer.training import TrainConfig, build_trainer
    from tests.helpers.tiny import tiny_dataset
    out = tmp_path / "run"
    tr = build_trainer(TrainConfig(method="rs-aaer", model="small-cnn", epochs=3, batch_size=16,
                                   eval_protocol="none", progress=False, device="cpu",
                                   probe_n=8, probe_every=2, tensorboard=True,
                                   out_dir=str(out)),
                       tiny_dataset(32, 16, classes=4, name="tiny", learnable=True))
    seen = []
    run_epoch = tr.run_epoch

    def spy(epoch):
        end = run_epoch(epoch)
        seen.append(scalars(str(out / "tensorboard")))    # read while training goes on
        return end

    tr.run_epoch = spy
    tr.fit()
    assert [[st for st, _ in s["train/loss"]] for s in seen] == [[0], [0, 1], [0, 1, 2]]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = seen[-1]
    assert [v for _, v in final["train/loss"]] == pytest.approx([r["train_loss"] for r in rows])
    assert [v for _, v in final["probe/pgd_acc"]] == pytest.approx(
        [r["probe_pgd_acc"] for r in rows])
    probes = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert [st for st, _ in final["probe_by_step/pgd_acc"]] == [p["step"] for p in probes]


def test_missing_tensorboard_is_one_line(two_runs, tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # not installed
    out = tmp_path / "rep"
    assert main(["report", *two_runs, "--out", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("aaer: error: --tensorboard needs the tensorboard package, which is not "
                   "installed: pip install 'aaer[tensorboard]' (or pip install tensorboard)")
    assert not out.exists()                              # refused before anything was written
