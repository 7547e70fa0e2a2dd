"""aaer demo and the CO fixture: the fixture's configuration, the AAER lambdas rule, the
missing-data message, the verdict, and the whole demo flow on a small stand-in data set."""
import io
import os

import pytest
import torch

import aaer.experiments.demo as demo
from aaer.cli import main
from aaer.data.datasets import Dataset
from aaer.errors import DownloadFailed
from aaer.reporting.report import load_run
from tests.helpers.run_dirs import CO_RUN, OK_RUN, make_run


def test_fixture_config():
    cfg = demo.co_fixture_config("rs-fgsm", 3, "runs/x")
    assert (cfg.data.dataset, cfg.data.n_train, cfg.model.name, cfg.method.epsilon) == \
        ("fashion-mnist", 10000, "small-cnn", 70.0)
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr_max, o.lr_peak) == (10, 64, 0.2, 0.5)
    assert (o.seed, cfg.runtime.out_dir, cfg.method.options) == (3, "runs/x", {})
    assert cfg.monitor.probe_n == 500 and cfg.monitor.probe_steps == 10 and \
        cfg.monitor.on_co == "warn"
    assert cfg.eps == pytest.approx(70 / 255) and cfg.evaluation.protocol == "quick"
    assert cfg.evaluation.n_eval is None          # 'quick' evaluates the first 1000 test points
    assert cfg.sources["optim.epochs"] == "co-fixture"
    assert cfg.sources["optim.seed"] == "explicit"


@pytest.mark.parametrize("method, lamdas", [("rs-aaer", (5.75, 1.5)), ("n-aaer", (2.75, 0.75))])
def test_fixture_aaer_lambdas_are_the_nearest_published_eps(method, lamdas):
    cfg = demo.co_fixture_config(method, 0, "runs/x", data_dir="/d")
    assert (cfg.method.lamda2, cfg.method.lamda3) == lamdas
    assert cfg.data.data_dir == "/d"
    assert cfg.sources["method.lamda2"] == ("nearest published: cifar10 eps 32 (none for "
                                            "fashion-mnist eps 70)")


def test_fixture_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown method 'rs-fgsmx'"):
        demo.co_fixture_config("rs-fgsmx", 0, "runs/x")


def test_missing_data_says_exactly_how_to_get_it(tmp_path, capsys):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    assert main(["demo", "--data-dir", str(empty), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"Fashion-MNIST was not found in {empty}" in err
    assert "sudo apt-get install -y dataset-fashion-mnist" in err
    assert "aaer demo --download" in err and "t10k-labels-idx1-ubyte.gz" in err
    assert not (tmp_path / "o").exists()


def test_verdict_lines(tmp_path):
    a = load_run(make_run(str(tmp_path / "rs-fgsm"), "rs-fgsm", CO_RUN))
    b = load_run(make_run(str(tmp_path / "rs-aaer"), "rs-aaer", OK_RUN))
    a.label, b.label = "rs-fgsm", "rs-aaer"
    assert demo.verdict([a, b]) == [
        "CO happened: rs-fgsm at epoch 4 (probe PGD accuracy 0.310 at epoch 2 -> 0.050, while "
        "FGSM accuracy 0.350 -> 0.700, confirmed at epoch 4)",
        "No CO: rs-aaer (final probe PGD 0.280, clean 0.660)"]
    assert demo.verdict([b]) == ["CO happened in no run.",
                                 "No CO: rs-aaer (final probe PGD 0.280, clean 0.660)"]
    assert demo.verdict([a])[1] == "No run escaped CO."


def _stand_in(monkeypatch):
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    lab = lambda n: torch.randint(0, 10, (n,), generator=g)
    monkeypatch.setitem(demo.CO_FIXTURE, "n_train", 128)
    monkeypatch.setitem(demo.CO_FIXTURE, "probe_n", 40)
    monkeypatch.setitem(demo.CO_FIXTURE, "n_eval", 40)
    return Dataset("fashion-mnist", img(160), lab(160), img(80), lab(80),
                   [str(i) for i in range(10)], (0.286,), (0.353,), source="stand-in")


@pytest.mark.timeout(180)          # two worker processes: a loaded machine needs more than 60 s
def test_demo_flow_two_processes(tmp_path, monkeypatch):
    out = io.StringIO()
    res = demo.run_demo(str(tmp_path / "demo"), epochs=2, jobs=2, threads=1,
                        data=_stand_in(monkeypatch), stream=out)
    text = out.getvalue()
    assert "training rs-fgsm, rs-aaer (seed 2, 2 epochs on 128 images, eps 70/255) in 2 " \
           "process(es) with 1 thread(s) each" in text
    for m in ("rs-fgsm", "rs-aaer"):
        assert os.path.isfile(tmp_path / "demo" / m / "results.json")
        for e in (0, 1):                          # each epoch reported once, as it finished
            assert text.count(f"  {m:<8} epoch  {e} ({e + 1}/2) | train acc ") == 1
    assert f"report:  {tmp_path / 'demo' / 'report.md'}" in text
    assert text.count("plot:    ") == 3
    assert text.rstrip().splitlines()[-2:] == res["verdict"]
    assert len(res["runs"]) == 2 and all(len(r.rows) == 2 for r in res["runs"])
    # the same numbers as a run trained here: the worker process changes nothing
    rows = res["runs"][0].rows
    solo = demo.run_demo(str(tmp_path / "solo"), methods=("rs-fgsm",), epochs=2, jobs=1,
                         threads=1, data=_stand_in(monkeypatch), progress=False,
                         stream=io.StringIO())
    assert [r["train_loss"] for r in solo["runs"][0].rows] == [r["train_loss"] for r in rows]
    assert [r["probe_pgd_acc"] for r in solo["runs"][0].rows] == \
        [r["probe_pgd_acc"] for r in rows]


def test_cli_demo_rejects_bad_jobs(capsys):
    assert main(["demo", "--jobs", "0"]) == 2
    assert "invalid --jobs 0" in capsys.readouterr().err


def test_cli_demo_download_goes_to_a_data_folder(monkeypatch, tmp_path, capsys):
    seen = []

    def fake(data_dir, download, fixture="fashion-mnist"):           # what the real download raises without a network
        seen.append((data_dir, download))
        raise DownloadFailed("no network here")

    monkeypatch.setattr(demo, "load_fixture_data", fake)
    assert main(["demo", "--download", "--out-dir", str(tmp_path / "o")]) == 2
    assert seen == [(os.path.join("data", "fashion-mnist"), True)]
    assert "no network here" in capsys.readouterr().err


def test_epoch_printer_prints_new_epochs_and_a_rollback(tmp_path):
    from aaer.runs import RunDir
    cfgs = [demo.co_fixture_config(m, 2, str(tmp_path / d)) for m, d in
            (("rs-fgsm", "rs-fgsm"), ("rs-fgsm", "rs-fgsm-rollback"))]
    out = io.StringIO()
    printer = demo.EpochPrinter(cfgs, out)
    row = lambda e, pgd: {"epoch": e, "train_acc": 0.5, "aae_count": 7, "seconds": 3.0,
                          "probe_clean_acc": 0.7, "probe_fgsm_acc": 0.4, "probe_pgd_acc": pgd}
    run = RunDir(str(tmp_path / "rs-fgsm-rollback"))
    run.start()
    printer()                                           # no metrics.jsonl yet: nothing
    assert out.getvalue() == ""
    run.write_metrics([row(0, 0.2), row(1, 0.3), row(2, 0.1)])
    printer()
    printer()                                           # each epoch printed once
    run.write_metrics([row(0, 0.2), row(1, 0.3)])       # a rollback back to epoch 1 ...
    printer()
    run.write_metrics([row(0, 0.2), row(1, 0.3), row(2, 0.25)])   # ... and epoch 2 again
    printer()
    lines = out.getvalue().splitlines()
    assert [ln[:37] for ln in lines] == [
        "  rs-fgsm-rollback epoch  0 (1/10) | ", "  rs-fgsm-rollback epoch  1 (2/10) | ",
        "  rs-fgsm-rollback epoch  2 (3/10) | ",
        "  rs-fgsm-rollback CO confirmed: roll",
        "  rs-fgsm-rollback epoch  2 (3/10) | "]
    assert lines[3] == "  rs-fgsm-rollback CO confirmed: rolled back, training again from epoch 2"
    assert lines[2].endswith("PGD 0.100 | 3 s") and lines[4].endswith("PGD 0.250 | 3 s")


def test_demo_with_rollback_says_what_the_rollback_did(tmp_path, monkeypatch):
    from tests.helpers.tiny import scripted_probes
    # probes in training order: the rollback run first (CO confirmed at epoch 3, back to
    # epoch 1, rescued), then RS-FGSM (CO from epoch 2 on), then RS-AAER (no CO)
    scripted_probes(monkeypatch,
              [0.25, 0.5, 0.125, 0.125, 0.375, 0.375, 0.4, 0.45] +
              [0.25, 0.5, 0.125, 0.125, 0.0625, 0.0625] + [0.25, 0.3, 0.35, 0.4, 0.4, 0.4],
              [0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5] + [0.25, 0.375, 0.5, 0.5, 0.5, 0.5] +
              [0.5] * 6)
    out = io.StringIO()
    res = demo.run_demo(str(tmp_path / "demo"), epochs=6, jobs=1, threads=1, rollback=True,
                        data=_stand_in(monkeypatch), progress=False, stream=out)
    text = out.getvalue()
    assert "training rs-fgsm, rs-aaer and rs-fgsm with --on-co rollback (seed 2, 6 epochs" \
        in text
    assert "[1/3] rs-fgsm -> " + str(tmp_path / "demo" / "rs-fgsm-rollback") in text
    assert [r.label for r in res["runs"]] == ["rs-fgsm", "rs-aaer", "rs-fgsm-rollback"]
    assert res["verdict"] == [
        "CO happened: rs-fgsm at epoch 2 (probe PGD accuracy 0.500 at epoch 1 -> 0.125, while "
        "FGSM accuracy 0.375 -> 0.500, confirmed at epoch 3)",
        "No CO: rs-aaer (final probe PGD 0.400, clean 0.900)",
        "With --on-co rollback: rs-fgsm-rollback rescued after 1 rollback(s) (at epoch 3 back "
        "to epoch 1, alpha 1.25 -> 0.9375; 2 epochs discarded): final probe PGD 0.450, "
        "against 0.062 for rs-fgsm"]
    assert text.rstrip().splitlines()[-3:] == res["verdict"]
    mon = load_run(str(tmp_path / "demo" / "rs-fgsm-rollback")).results["monitor"]
    assert mon["probe"]["on_co"] == "rollback" and mon["rescued"]


DEMO_PARENT = """
import sys, torch
sys.path.insert(0, {root!r})
import aaer.experiments.demo as demo
from aaer.data.datasets import Dataset
g = torch.Generator().manual_seed(0)
img = lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
lab = lambda n: torch.randint(0, 10, (n,), generator=g)
demo.CO_FIXTURE.update(n_train=128, probe_n=40, n_eval=40)
data = Dataset("fashion-mnist", img(160), lab(160), img(80), lab(80),
               [str(i) for i in range(10)], (0.286,), (0.353,), source="stand-in")
demo.run_demo({out!r}, epochs=500, jobs=2, threads=1, data=data, progress=False)
"""


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.mark.timeout(120)
def test_the_demos_workers_end_when_the_demo_is_killed(tmp_path):
    """A demo killed outright (SIGKILL: no chance to clean up) leaves no worker training on:
    each worker watches its parent and exits within seconds (before this, killed test runs
    left workers training for tens of minutes)."""
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", DEMO_PARENT.format(
        root=root, out=str(tmp_path / "demo"))], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [c for c in _children(parent.pid)
                   if "spawn_main" in open(f"/proc/{c}/cmdline").read()]
    assert len(workers) == 2, "the demo's two workers did not start"
    while not (tmp_path / "demo" / "rs-fgsm" / "metrics.jsonl").exists() and \
            time.time() < deadline:
        time.sleep(0.5)                       # the workers are training
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.time()
    while time.time() - t0 < 20 and any(os.path.exists(f"/proc/{w}") and
                                         open(f"/proc/{w}/stat").read().split()[2] != "Z"
                                         for w in workers):
        time.sleep(0.5)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}")
             and open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their demo"


def test_a_shortened_demo_stops_at_co_with_the_epochs_given(tmp_path, monkeypatch):
    """run_demo(on_co="stop", epochs=N): both reach the runs' settings (the CIFAR-10 demo
    test relies on them)."""
    res = demo.run_demo(str(tmp_path / "d"), methods=("rs-fgsm",), epochs=1, jobs=1,
                        threads=1, data=_stand_in(monkeypatch), progress=False,
                        stream=io.StringIO(), on_co="stop")
    (run,) = res["runs"]
    assert run.settings.monitor.on_co == "stop" and run.settings.optim.epochs == 1
    assert len(run.rows) == 1
