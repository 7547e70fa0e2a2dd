"""`aaer train --wandb`: a tiny run logged to Weights & Biases in offline mode (no network),
read back from the run's .wandb transaction log with W&B's own reader (`wandb leet inspect
--json`), against metrics.jsonl, probes.jsonl, results.json and config.json; a resumed run
continues the same W&B run; CO events; a missing package or W&B login is one line."""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from aaer.errors import MissingExtra, TrainingInterrupted, UsageError
from aaer.training import TrainConfig, build_trainer, resume
from tests.helpers.tiny import read_rows, scripted_probes, signal_at, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

WANDB = os.path.join(os.path.dirname(sys.executable), "wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, its files and settings under tmp_path, no credentials."""
    for k in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.makedirs(tmp_path / "wandb_dir")
    return tmp_path / "wandb_dir"


def logs(wandb_dir):
    """The .wandb transaction logs under ``wandb_dir``, oldest first."""
    return sorted(glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb")))


def records(path):
    """Every record of a .wandb log, read by W&B's own reader."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", path], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def summary(path):
    out = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", path],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def history(recs, key):
    """The history rows that hold ``key``."""
    return [r["history"]["item"] for r in recs if r["type"] == "history"
            and key in r["history"]["item"]]


def config_of(recs):
    """The run's config: the init record's, then every update, as W&B merges them."""
    cfg = {}
    for r in recs:
        if r["type"] == "run":
            cfg.update(r["run"].get("config", {}).get("update", {}))
        elif r["type"] == "config":
            cfg.update(r["config"].get("update", {}))
    cfg.pop("_wandb", None)
    return cfg


def _config(out, **kw):
    base = dict(method="rs-aaer", model="small-cnn", epochs=3, batch_size=16, progress=False,
                device="cpu", probe_n=8, probe_every=3, eval_protocol="lineage", n_eval=8,
                wandb=True, out_dir=str(out), seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return tiny_dataset(48, 16, classes=4, name="tiny", learnable=True)


@pytest.mark.timeout(180)
def test_offline_run_holds_metrics_probes_results_and_config(tmp_path, offline):
    out = tmp_path / "run"
    res = build_trainer(_config(out), _data()).fit()
    [log] = logs(offline)
    recs, summ = records(log), summary(log)
    rows = read_rows(out / "metrics.jsonl")
    probes = read_rows(out / "probes.jsonl")
    assert len(rows) == 3 and len(probes) == 3            # probes at steps 3, 6, 9
    # one W&B run, finished, whose id the run directory keeps
    ident = json.loads((out / "wandb_run.json").read_text())
    assert summ["run_id"] == ident["id"] and summ["project"] == "aaer"
    assert ident["mode"] == "offline" and summ["state"] == "finished"
    assert summ["exit_code"] == 0
    # per epoch: the metrics.jsonl rows, against the axis "epoch"
    epochs = history(recs, "train_loss")
    assert [h["epoch"] for h in epochs] == [0, 1, 2]
    for key in ("train_loss", "train_acc", "lr", "probe_clean_acc", "probe_fgsm_acc",
                "probe_pgd_acc", "aae_count", "aaer_reg", "images_per_s"):
        assert [h[key] for h in epochs] == [r[key] for r in rows], key
    assert [h["co_flag"] for h in epochs] == [int(r["co_flag"]) for r in rows]
    axes = {r["metric"]["name"]: r["metric"].get("step_metric") for r in recs
            if r["type"] == "metric"}
    assert axes["train_loss"] == "epoch" and axes["probe_by_step/pgd_acc"] == "optimizer_step"
    # per probe: probes.jsonl, against the optimiser step
    by_step = history(recs, "probe_by_step/pgd_acc")
    assert [h["optimizer_step"] for h in by_step] == [p["step"] for p in probes] == [3, 6, 9]
    for key in ("clean", "fgsm", "pgd"):
        assert [h[f"probe_by_step/{key}_acc"] for h in by_step] == [p[key] for p in probes]
    # the final evaluation (results.json) in the summary
    ev = json.loads((out / "results.json").read_text())["evaluation"]
    assert ev["results"]["pgd"]["acc"] == res["evaluation"]["results"]["pgd"]["acc"]
    for attack in ("clean", "fgsm", "pgd"):
        assert summ["summary"][f"eval/{attack}_acc"] == ev["results"][attack]["acc"]
    assert (summ["summary"]["eval/protocol"], summ["summary"]["eval/n"]) == \
        (ev["protocol"]["name"], 8) == ("lineage+custom", 8)        # --n-eval 8
    assert summ["summary"]["co/detected"] is False and summ["summary"]["co/events"] == []
    assert summ["summary"]["train_seconds"] == res["train_seconds"]
    # the settings with their sources, and what they built: config.json entire
    cfg_json = json.loads((out / "config.json").read_text())
    cfg = config_of(recs)
    assert cfg == cfg_json
    assert cfg["settings"]["runtime"]["wandb"] is True
    assert cfg["sources"]["method.name"] == "explicit"
    assert cfg["sources"]["method.lamda2"].startswith("published")      # RS-AAER's table
    assert cfg["source_kinds"]["method.lamda2"] == "published"
    assert cfg["method_resolved"]["name"] == "rs-aaer"


@pytest.mark.timeout(240)
def test_a_resumed_run_continues_its_wandb_run(tmp_path, offline):
    out = tmp_path / "run"
    tr = build_trainer(_config(out, eval_protocol=None), _data())
    signal_at(tr, 1, 1, signal.SIGTERM)                  # mid epoch 1
    with pytest.raises(TrainingInterrupted):
        tr.fit()
    first = json.loads((out / "wandb_run.json").read_text())["id"]
    resume(str(out), dataset=_data())
    a, b = logs(offline)
    sa, sb = summary(a), summary(b)
    assert sa["run_id"] == sb["run_id"] == first             # the same W&B run, continued
    assert sa["exit_code"] == 1 and sb["exit_code"] == 0     # stopped early, then finished
    [run_b] = [r["run"] for r in records(b) if r["type"] == "run"]
    assert run_b["resume"] is True
    rows = read_rows(out / "metrics.jsonl")
    seen = [h["epoch"] for h in history(records(a), "train_loss")] + \
        [h["epoch"] for h in history(records(b), "train_loss")]
    assert seen == [r["epoch"] for r in rows] == [0, 1, 2]
    assert history(records(b), "train_loss")[-1]["train_loss"] == rows[-1]["train_loss"]


@pytest.mark.timeout(240)
def test_a_run_resumed_with_wandb_for_the_first_time_logs_its_history(tmp_path, offline):
    out = tmp_path / "run"
    tr = build_trainer(_config(out, eval_protocol=None, wandb=False), _data())
    signal_at(tr, 1, 1, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        tr.fit()
    assert not (out / "wandb_run.json").exists() and not logs(offline)
    resume(str(out), dataset=_data(), wandb=True)
    [log] = logs(offline)
    recs = records(log)
    rows, probes = read_rows(out / "metrics.jsonl"), read_rows(out / "probes.jsonl")
    assert [h["epoch"] for h in history(recs, "train_loss")] == [0, 1, 2]
    assert [h["train_loss"] for h in history(recs, "train_loss")] == \
        [r["train_loss"] for r in rows]
    assert [h["optimizer_step"] for h in history(recs, "probe_by_step/pgd_acc")] == \
        [p["step"] for p in probes]
    assert config_of(recs)["sources"]["runtime.wandb"] == "changed at resume"


@pytest.mark.timeout(180)
def test_co_events_are_logged_at_their_step_and_in_the_summary(tmp_path, offline,
                                                               monkeypatch):
    scripted_probes(monkeypatch, [0.25, 0.5, 0.125, 0.0625, 0.0625],
                    [0.25, 0.375, 0.5, 0.625, 0.625])
    out = tmp_path / "run"
    res = build_trainer(_config(out, epochs=5, batch_size=48, probe_every=0,
                                eval_protocol=None), _data()).fit()
    [log] = logs(offline)
    recs, summ = records(log), summary(log)
    events = res["monitor"]["events"]
    assert len(events) == 2                     # CO confirmed at epochs 3 and 4 (warn)
    assert summ["summary"]["co/events"] == events
    assert summ["summary"]["co/detected"] is True and summ["summary"]["co/epoch"] == 2
    logged = history(recs, "co/event")
    assert [h["optimizer_step"] for h in logged] == [e["step"] for e in events] == [4, 5]
    assert [h["co/onset_epoch"] for h in logged] == [2, 2]
    assert [h["co/pgd_drop"] for h in logged] == [e["evidence"]["pgd_drop"] for e in events]
    assert [h["co_flag"] for h in history(recs, "train_loss")] == [0, 0, 0, 1, 1]


def test_missing_wandb_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)          # not installed
    out = tmp_path / "run"
    with pytest.raises(MissingExtra) as e:
        build_trainer(_config(out), _data())
    assert str(e.value) == ("--wandb needs the wandb package, which is not installed: pip "
                            "install 'aaer[wandb]' (or pip install wandb)")
    assert not out.exists()


def test_online_without_a_login_is_one_line(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))       # no ~/.netrc
    out = tmp_path / "run"
    with pytest.raises(UsageError) as e:
        build_trainer(_config(out, wandb_mode="online"), _data())
    msg = str(e.value)
    assert msg.startswith("--wandb could not start a W&B run (") and "\n" not in msg
    assert "wandb login" in msg and "--wandb-mode offline" in msg
    assert not (out / "wandb_run.json").exists()


def test_wandb_flags_reach_the_run_settings():
    from aaer.cli import build_parser, config_from_args
    args = build_parser().parse_args(["train", "--wandb", "--wandb-project", "p",
                                      "--wandb-entity", "team", "--wandb-mode", "offline"])
    rt = config_from_args(args).resolve().runtime
    assert (rt.wandb, rt.wandb_project, rt.wandb_entity, rt.wandb_mode) == \
        (True, "p", "team", "offline")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--wandb-mode", "sometimes"])
