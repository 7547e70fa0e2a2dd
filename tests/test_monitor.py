"""The CO monitor: the rule on given probe values, the probe batch, the responses
(warn / stop / rollback) inside a real Trainer with scripted probe values, mid-epoch
probing, that probing leaves training untouched, and per-class AAE counts."""
import json

import pytest
import torch

from aaer.data.datasets import Dataset
from aaer.methods.base import aae_statistics, summarize_aae
from aaer.monitor import CORule, evidence_text, select_probe_data
from aaer.training import TrainConfig, build_trainer
from tests.helpers.tiny import scripted_probes


pytestmark = pytest.mark.usefixtures("one_thread")


def _rec(epoch, pgd, fgsm=0.5, clean=0.8):
    return {"epoch": epoch, "step": (epoch + 1) * 10, "clean": clean, "fgsm": fgsm, "pgd": pgd}


# -- the rule --------------------------------------------------------------------------

def test_rule_flags_a_drop_from_the_best_with_fgsm_high():
    hist = [_rec(0, 0.125), _rec(1, 0.375, 0.5), _rec(2, 0.25)]
    ev = CORule().check(hist, _rec(3, 0.0625, fgsm=0.75))
    assert ev is not None
    assert (ev["pgd_ref"], ev["ref_epoch"], ev["pgd_now"]) == (0.375, 1, 0.0625)
    assert ev["pgd_drop"] == pytest.approx(0.3125)
    assert (ev["fgsm_now"], ev["fgsm_ref"]) == (0.75, 0.5)
    assert ev["threshold"] == 0.2
    assert ev["rule"] == ("probe PGD accuracy more than min(0.2, max(0.75 x that accuracy, "
                          "0.05)) below its best so far on 2 consecutive probes, while probe "
                          "FGSM accuracy fell by less than 0.5 times as much; or probe PGD "
                          "accuracy at most 0.05 while FGSM accuracy is at least 0.25 above it "
                          "on 2 consecutive probes")
    assert ev["clause"] == "drop"


def test_rule_needs_a_drop_of_more_than_the_threshold():
    hist = [_rec(0, 0.75)]
    assert CORule(drop=0.25).check(hist, _rec(1, 0.5)) is None        # exactly 0.25: no
    assert CORule(drop=0.25).check(hist, _rec(1, 0.49)) is not None
    assert CORule().check([], _rec(0, 0.0, fgsm=0.2)) is None           # nothing to compare


def test_weak_models_need_a_relative_fall():
    # best 0.125 < 0.2: the absolute rule can never fire; 0.75 x 0.125 = 0.09375 can
    hist = [_rec(0, 0.125, 0.125)]
    assert CORule().check(hist, _rec(1, 0.03125, 0.125)) is None             # fell exactly 0.09375
    ev = CORule().check(hist, _rec(1, 0.0, 0.125))
    assert ev["threshold"] == 0.09375 and ev["pgd_drop"] == 0.125
    assert CORule(rel_drop=None).check(hist, _rec(1, 0.0, 0.125)) is None
    # a model that was never robust has nothing to collapse from: the fall must exceed 0.05
    # (FGSM accuracy 0.125 here, so the masked clause stays quiet)
    assert CORule().check([_rec(0, 0.046875, 0.125)], _rec(1, 0.0, 0.125)) is None
    assert CORule(min_drop=0.0).check([_rec(0, 0.046875, 0.125)],
                                      _rec(1, 0.0, 0.125))["clause"] == "drop"
    # a strong model: min(0.2, 0.75 x 0.5) = 0.2, Wong et al.'s threshold
    assert CORule().check([_rec(0, 0.5)], _rec(1, 0.25))["threshold"] == 0.2


def test_fgsm_clause_separates_co_from_a_diverging_run():
    hist = [_rec(0, 0.5, fgsm=0.625)]
    diverged = _rec(1, 0.125, fgsm=0.375)       # PGD fell 0.375, FGSM 0.25: not < 0.1875
    assert CORule().check(hist, diverged) is None
    assert CORule(fgsm_ratio=0.75).check(hist, diverged) is not None     # 0.25 < 0.28125
    assert CORule(fgsm_ratio=None).check(hist, diverged) is not None     # Wong et al. alone
    assert CORule().check(hist, _rec(1, 0.125, fgsm=0.5)) is not None    # fell 0.125 < 0.1875
    assert CORule().check(hist, _rec(1, 0.125, fgsm=0.875)) is not None  # rose


def test_previous_reference_is_wong_et_al_rule():
    hist = [_rec(0, 0.6), _rec(1, 0.35)]
    cur = _rec(2, 0.25)
    wong = CORule(reference="previous", rel_drop=None, patience=1, fgsm_ratio=None, gap=None)
    assert wong.check(hist, cur) is None                                # 0.10 below previous
    ev = CORule(reference="best").check(hist, cur)
    assert ev["ref_epoch"] == 0 and ev["pgd_drop"] == pytest.approx(0.35)
    # while a drop is pending confirmation, "previous" is the probe before the drop
    ev = CORule(reference="previous").check(hist, cur, pending=1)
    assert ev["ref_epoch"] == 0


def test_masked_clause_flags_a_run_never_robust_to_pgd_but_robust_to_fgsm():
    # zero-start FGSM at a large eps: PGD accuracy ~0 from the first probe, FGSM high
    ev = CORule().check([], _rec(0, 0.0, fgsm=0.40625))
    assert ev["clause"] == "masked" and ev["fgsm_gap"] == 0.40625
    assert ev["pgd_ref"] == 0.0 and ev["ref_epoch"] == 0              # no earlier probe
    assert "while FGSM accuracy is 0.4062" in evidence_text(ev)
    hist = [_rec(0, 0.03125, fgsm=0.25)]
    assert CORule().check(hist, _rec(1, 0.046875, fgsm=0.28125)) is None   # gap < 0.25
    assert CORule().check(hist, _rec(1, 0.046875, fgsm=0.296875)) is not None  # gap 0.25
    assert CORule().check(hist, _rec(1, 0.0625, fgsm=0.75)) is None    # PGD above the floor
    assert CORule(floor=0.0625).check(hist, _rec(1, 0.0625, fgsm=0.75)) is not None
    assert CORule(gap=None).check(hist, _rec(1, 0.0, fgsm=0.75)) is None
    # a model that is weak against both attacks (early training, divergence) is not CO
    assert CORule().check(hist, _rec(1, 0.0, fgsm=0.125)) is None


def test_evidence_text_of_a_drop():
    ev = CORule().check([_rec(0, 0.375, fgsm=0.5)], _rec(1, 0.0625, fgsm=0.625))
    assert evidence_text(ev, 3) == ("probe PGD accuracy 0.375 at epoch 0 -> 0.062, while FGSM "
                                    "accuracy 0.500 -> 0.625")


@pytest.mark.parametrize("kwargs, flag", [
    ({"co_drop": 0}, "--co-drop 0.0"), ({"co_drop": 1.5}, "--co-drop 1.5"),
    ({"co_reference": "worst"}, "--co-reference 'worst'"),
    ({"co_fgsm_ratio": 1.5}, "--co-fgsm-ratio 1.5"), ({"co_rel_drop": 1.5}, "--co-rel-drop"),
    ({"co_patience": 0}, "--co-patience 0"), ({"co_min_drop": 0.3}, "--co-min-drop 0.3"),
    ({"co_gap": 1.5}, "--co-gap 1.5"), ({"co_floor": -0.1}, "--co-floor -0.1"),
    ({"co_floor": 1}, "--co-floor 1"), ({"co_patience": 1.5}, "--co-patience 1.5"),
    ({"co_drop": float("nan")}, "--co-drop nan"), ({"co_gap": float("inf")}, "--co-gap inf")])
def test_rule_settings_are_checked_by_the_schema(kwargs, flag):
    with pytest.raises(ValueError, match=flag.replace("(", r"\(")):
        TrainConfig(**kwargs).resolve()


# -- the probe batch -------------------------------------------------------------------

def test_probe_data_sources():
    tx, ty = torch.arange(100).view(100, 1, 1, 1), torch.arange(100)
    vx, vy = 1000 + torch.arange(30).view(30, 1, 1, 1), 1000 + torch.arange(30)
    px, py, kx, ky, text = select_probe_data("test", 20, tx, ty, vx, vy)
    assert py.tolist() == list(range(1000, 1020)) and ky.tolist() == list(range(100))
    assert text == "the first 20 test points"
    # holdout after the first n_train images: training keeps all of them
    px, py, kx, ky, text = select_probe_data("holdout", 20, tx, ty, vx, vy, n_train=60)
    assert py.tolist() == list(range(60, 80)) and ky.tolist() == list(range(60))
    # no room after n_train: the last 20 of the training images leave training
    px, py, kx, ky, text = select_probe_data("holdout", 20, tx, ty, vx, vy, n_train=90)
    assert py.tolist() == list(range(70, 90)) and ky.tolist() == list(range(70))
    assert "held out of training" in text
    px, py, kx, ky, _ = select_probe_data("holdout", 20, tx, ty, vx, vy)
    assert py.tolist() == list(range(80, 100)) and ky.tolist() == list(range(80))
    with pytest.raises(ValueError, match="--probe-source 'train'"):
        select_probe_data("train", 20, tx, ty, vx, vy)
    with pytest.raises(ValueError, match="exceeds the 30 test points"):
        select_probe_data("test", 31, tx, ty, vx, vy)
    with pytest.raises(ValueError, match="leaves no training images"):
        select_probe_data("holdout", 100, tx, ty, vx, vy)


# -- inside the trainer ----------------------------------------------------------------

def _dataset(n_train=192, n_test=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    lab = lambda n: torch.randint(0, 4, (n,), generator=g)
    return Dataset("synthetic", img(n_train), lab(n_train), img(n_test), lab(n_test),
                   ["a", "b", "c", "d"], (0.5,), (0.5,))


def _cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), dataset="synthetic", model="small-cnn",
                method="rs-aaer", method_hparams={"lamda2": 2.5, "lamda3": 1.5}, epsilon=32,
                epochs=5, batch_size=64, lr_max=0.05, eval_protocol=None, probe_n=32,
                progress=False, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _rows(cfg):
    with open(f"{cfg.out_dir}/metrics.jsonl") as f:
        return [json.loads(l) for l in f]


PGD = [0.25, 0.5, 0.125, 0.0625, 0.0625]
FGSM = [0.25, 0.375, 0.5, 0.625, 0.625]


def test_warn_records_flag_epoch_and_evidence(tmp_path, monkeypatch):
    scripted_probes(monkeypatch, PGD, FGSM)
    cfg = _cfg(tmp_path, "warn")
    res = build_trainer(cfg, _dataset()).fit()
    rows = _rows(cfg)
    # epoch 2 meets the rule, epoch 3 confirms it (patience 2): CO since epoch 2
    assert [r["co_candidate"] for r in rows] == [False, False, True, True, True]
    assert [r["co_flag"] for r in rows] == [False, False, False, True, True]
    assert [r["co_epoch"] for r in rows] == [None, None, None, 2, 2]
    assert [r["probe_pgd_acc"] for r in rows] == PGD
    ev = rows[3]["co_events"][0]
    assert ev["response"] == "warn" and ev["onset_epoch"] == 2 and ev["epoch"] == 3
    assert ev["evidence"]["ref_epoch"] == 1 and ev["evidence"]["pgd_drop"] == 0.4375
    mon = res["monitor"]
    assert mon["co_detected"] and mon["co_epoch"] == 2 and len(mon["events"]) == 2
    assert mon["best_probe"]["epoch"] == 1 and mon["stopped"] is None
    assert mon["probe"]["n"] == 32 and mon["probe"]["pgd_steps"] == 10
    log = (tmp_path / "warn" / "train.log").read_text()
    assert ("CO candidate at epoch 2: probe PGD accuracy 0.5000 at epoch 1 -> 0.1250, while "
            "FGSM accuracy") in log
    assert ("CO detected at epoch 3 (since epoch 2): probe PGD accuracy 0.5000 at epoch 1 -> "
            "0.0625, while FGSM accuracy") in log
    best = torch.load(tmp_path / "warn" / "best_probe.pt", weights_only=True)
    assert best["epoch"] == 1 and best["probe"]["pgd"] == 0.5


def test_a_single_dip_is_not_co(tmp_path, monkeypatch):
    scripted_probes(monkeypatch, [0.5, 0.125, 0.5, 0.125, 0.0625], [0.5] * 5)
    res = build_trainer(_cfg(tmp_path, "dip"), _dataset()).fit()
    rows = _rows(_cfg(tmp_path, "dip"))
    assert [r["co_candidate"] for r in rows] == [False, True, False, True, True]
    assert res["monitor"]["co_epoch"] == 3 and len(res["monitor"]["events"]) == 1


def test_stop_ends_training_with_the_best_probe_weights(tmp_path, monkeypatch):
    scripted_probes(monkeypatch, PGD, FGSM)
    cfg = _cfg(tmp_path, "stop", on_co="stop")
    trainer = build_trainer(cfg, _dataset())
    reached = {}
    mon_probe = trainer.monitor.probe

    def spy(model, epoch, step, **kw):      # the weights each end-of-epoch probe sees
        reached[epoch] = {k: v.clone() for k, v in model.net.state_dict().items()}
        return mon_probe(model, epoch, step, **kw)

    trainer.monitor.probe = spy
    res = trainer.fit()
    rows = _rows(cfg)
    assert len(rows) == 4 and rows[-1]["co_stop"] and res["final_epoch"]["epoch"] == 3
    assert res["monitor"]["stopped"]["restored_from"]["epoch"] == 1
    best = torch.load(tmp_path / "stop" / "best_probe.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "stop" / "model.pt", weights_only=True)
    assert best.keys() == final.keys()
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert all(torch.equal(best[k], reached[1][k]) for k in best)       # epoch 1's weights
    assert not all(torch.equal(best[k], reached[3][k]) for k in best)   # not epoch 3's


def _spy_epochs(trainer):
    """The weights and torch RNG state at the start of every run_epoch call, in order."""
    starts = []
    run_epoch = trainer.run_epoch

    def spy(epoch):
        starts.append((epoch, {k: v.clone() for k, v in trainer.model.net.state_dict().items()},
                       torch.get_rng_state().clone()))
        return run_epoch(epoch)

    trainer.run_epoch = spy
    return starts


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_rewinds_strengthens_and_stops_when_co_comes_back(tmp_path, monkeypatch):
    # epoch:          0     1    2      3      | 2    3       4
    scripted_probes(monkeypatch, [0.25, 0.5, 0.125, 0.125, 0.5, 0.0625, 0.0625],
              [0.25, 0.375, 0.5, 0.5, 0.5, 0.625, 0.625])
    cfg = _cfg(tmp_path, "rb", on_co="rollback", max_rollbacks=1, epochs=5)
    trainer = build_trainer(cfg, _dataset())
    starts = _spy_epochs(trainer)
    res = trainer.fit()
    rows = _rows(cfg)
    mon = res["monitor"]
    rb = mon["rollbacks"]
    # CO confirmed at epoch 3 (since 2): back to the end of epoch 1, 2 epochs discarded
    assert len(rb) == 1 and rb[0]["epoch"] == 3 and rb[0]["restored_from"]["epoch"] == 1
    assert rb[0]["epochs_discarded"] == 2.0 and [r["epoch"] for r in rb[0]["rows_discarded"]] \
        == [2, 3]
    assert (rb[0]["param"], rb[0]["old"], rb[0]["new"]) == ("lamda1", 1.0, 2.0)
    assert trainer.method.lamda1 == 2.0 and rows[2]["method_changes"] == {"lamda1": 2.0}
    # epoch 2 ran twice, the second time from exactly the state after epoch 1
    assert [e for e, _, _ in starts] == [0, 1, 2, 3, 2, 3, 4]
    assert _same(starts[4][1], starts[2][1]) and torch.equal(starts[4][2], starts[2][2])
    # CO again (epochs 3-4) after --max-rollbacks 1: stop with the best probe's weights
    assert mon["stopped"]["epoch"] == 4 and [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[4]["co_events"][0]["response"] == "stop (max rollbacks reached)"
    assert mon["outcome"].startswith("not rescued: CO again after 1 rollback(s)")
    assert not mon["rescued"] and res["epochs_trained"] == 7.0
    assert mon["best_probe"]["epoch"] == 1                 # the later equal 0.5 is not better


def test_rollback_of_a_plain_method_rescues_the_run(tmp_path, monkeypatch):
    scripted_probes(monkeypatch, [0.25, 0.5, 0.125, 0.125, 0.375, 0.375, 0.4, 0.45],
              [0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    cfg = _cfg(tmp_path, "rb2", method="rs-fgsm", method_hparams={}, on_co="rollback",
               epochs=6)
    trainer = build_trainer(cfg, _dataset())
    starts = _spy_epochs(trainer)
    res = trainer.fit()
    mon = res["monitor"]
    assert trainer.method.alpha == pytest.approx(1.25 * 0.75)
    assert mon["rollbacks"][0]["param"] == "alpha" and mon["outcome"] == \
        "rescued after 1 rollback(s)"
    assert mon["rescued"] and not mon["ends_in_co"] and mon["epochs_discarded"] == 2.0
    assert res["epochs_trained"] == 8.0 and [r["epoch"] for r in _rows(cfg)] == list(range(6))
    assert _same(starts[4][1], starts[2][1]) and torch.equal(starts[4][2], starts[2][2])
    # the schedule went back with the rest: epoch 2's second run has epoch 2's lr
    lrs = [r["lr"] for r in _rows(cfg)]
    assert lrs[2] == pytest.approx(mon["rollbacks"][0]["rows_discarded"][0]["lr"])
    assert mon["stopped"] is None


def test_two_rollbacks_to_the_same_point_on_the_cyclic_schedule(tmp_path, monkeypatch):
    # CO twice after epoch 1's best probe: both rollbacks return to the same saved state,
    # and CyclicLR's load_state_dict must not consume that state the first time
    # epoch:          0     1    2      3      | 2      3      | 2    3    4
    scripted_probes(monkeypatch, [0.25, 0.5, 0.125, 0.125, 0.125, 0.125, 0.4, 0.45, 0.45],
              [0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    cfg = _cfg(tmp_path, "rb3", method="rs-fgsm", method_hparams={}, on_co="rollback",
               max_rollbacks=2, epochs=5, lr_schedule="cyclic")
    trainer = build_trainer(cfg, _dataset())
    starts = _spy_epochs(trainer)
    res = trainer.fit()
    mon = res["monitor"]
    assert [r["restored_from"]["epoch"] for r in mon["rollbacks"]] == [1, 1]
    assert trainer.method.alpha == pytest.approx(1.25 * 0.75 * 0.75)
    assert [e for e, _, _ in starts] == [0, 1, 2, 3, 2, 3, 2, 3, 4]
    assert _same(starts[6][1], starts[2][1]) and torch.equal(starts[6][2], starts[2][2])
    lrs = [r["lr"] for r in _rows(cfg)]
    assert lrs[2] == pytest.approx(mon["rollbacks"][1]["rows_discarded"][0]["lr"])
    assert mon["outcome"] == "rescued after 2 rollback(s)" and res["epochs_trained"] == 9.0


def test_co_from_the_start_rolls_back_to_the_start(tmp_path, monkeypatch):
    # masked CO (PGD 0 while FGSM is high) from the first probes: no good probe to go back
    # to, so training starts again from its initial state with a smaller step
    scripted_probes(monkeypatch, [0.0, 0.0, 0.25, 0.3, 0.3], [0.5, 0.5, 0.3, 0.35, 0.35])
    cfg = _cfg(tmp_path, "start", method="fgsm", method_hparams={}, on_co="rollback",
               epochs=3)
    trainer = build_trainer(cfg, _dataset())
    starts = _spy_epochs(trainer)
    res = trainer.fit()
    rb = res["monitor"]["rollbacks"][0]
    assert rb["restored_from"] == {"epoch": -1, "step": 0, "pgd": None}
    assert rb["epochs_discarded"] == 2.0 and trainer.method.alpha == pytest.approx(0.75)
    assert [e for e, _, _ in starts] == [0, 1, 0, 1, 2]
    assert _same(starts[2][1], starts[0][1]) and torch.equal(starts[2][2], starts[0][2])
    assert res["monitor"]["outcome"] == "rescued after 1 rollback(s)"


def test_out_of_co_but_robust_to_nothing_is_no_rescue(tmp_path, monkeypatch, capsys):
    # masked CO from the start; after the rollback the probes no longer meet the rule, but
    # only because FGSM accuracy fell too: PGD accuracy stays under the floor (zero-start
    # FGSM on the CO fixture ends like this). That is not a rescue, and the run says so.
    from aaer.cli import _co_outcome
    scripted_probes(monkeypatch, [0.0, 0.0, 0.02, 0.03, 0.03], [0.5, 0.5, 0.1, 0.1, 0.1])
    cfg = _cfg(tmp_path, "weak", method="fgsm", method_hparams={}, on_co="rollback",
               epochs=3)
    res = build_trainer(cfg, _dataset()).fit()
    capsys.readouterr()
    mon = res["monitor"]
    assert len(mon["rollbacks"]) == 1 and mon["stopped"] is None
    assert mon["outcome"] == ("not rescued: no CO at the end after 1 rollback(s), but probe "
                              "PGD accuracy 0.030 is at most --co-floor 0.05 (not robust)")
    assert not mon["rescued"] and not mon["ends_in_co"]
    _co_outcome(res)
    assert capsys.readouterr().err == f"aaer: catastrophic overfitting {mon['outcome']}\n"


def test_divergence_after_a_rollback_stops_with_the_best_probe(tmp_path, monkeypatch,
                                                               capsys):
    # the first epoch trained after the rollback leaves a non-finite weight (as a doubled
    # lamda1 did to N-AAER on the CO fixture): the checkpoint check catches it, and the run
    # (which had a healthy best probe) ends with those weights, saying it was not rescued
    from aaer.cli import _co_outcome
    scripted_probes(monkeypatch, [0.25, 0.5, 0.125, 0.125] + [0.5] * 4, [0.25, 0.375, 0.5, 0.5] +
              [0.5] * 4)
    cfg = _cfg(tmp_path, "div", on_co="rollback", epochs=5)
    trainer = build_trainer(cfg, _dataset())
    run_epoch = trainer.run_epoch

    def blow_up_after_a_rollback(epoch):
        row = run_epoch(epoch)
        if trainer.monitor.rollbacks:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))
        return row

    trainer.run_epoch = blow_up_after_a_rollback
    res = trainer.fit()
    capsys.readouterr()
    mon = res["monitor"]
    assert len(mon["rollbacks"]) == 1 and mon["rollbacks"][0]["new"] == 2.0
    assert mon["stopped"]["reason"] == "diverged" and mon["stopped"]["epoch"] == 2
    assert mon["stopped"]["restored_from"] == {"epoch": 1, "step": 6, "pgd": 0.5}
    assert mon["outcome"] == ("not rescued: training diverged after 1 rollback(s); stopped "
                              "with the weights of the best probe")
    assert not mon["rescued"] and not mon["ends_in_co"]
    best = torch.load(f"{cfg.out_dir}/best_probe.pt", weights_only=True)["model"]
    model = torch.load(f"{cfg.out_dir}/model.pt", weights_only=True)
    model = model.get("model", model)
    assert _same(best, {k: model[k] for k in best})
    _co_outcome(res)
    assert "catastrophic overfitting not rescued: training diverged" in capsys.readouterr().err


def test_divergence_without_a_rollback_is_still_an_error(tmp_path, monkeypatch):
    from aaer.errors import TrainingDiverged
    cfg = _cfg(tmp_path, "div0", on_co="rollback", lr_max=1e30, epochs=2)
    with pytest.raises(TrainingDiverged):
        build_trainer(cfg, _dataset()).fit()


def test_co_from_the_start_every_time_ends_in_co_and_says_so(tmp_path, monkeypatch):
    # masked CO from the first probe, before and after the rollback to the start: the run
    # stops with its current weights, which are in CO (no healthy probe to restore)
    scripted_probes(monkeypatch, [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5])
    cfg = _cfg(tmp_path, "never", method="fgsm", method_hparams={}, on_co="rollback",
               max_rollbacks=1, epochs=3)
    res = build_trainer(cfg, _dataset()).fit()
    mon = res["monitor"]
    assert len(mon["rollbacks"]) == 1 and mon["stopped"]["restored_from"] is None
    assert mon["ends_in_co"] is True and not mon["rescued"]
    assert mon["outcome"] == ("not rescued: CO again after 1 rollback(s); stopped with its "
                              "weights in CO (no probe before CO to go back to)")
    assert res["epochs_trained"] == 4.0


def test_a_candidate_at_the_last_probe_is_acted_on_by_rollback_not_by_warn(tmp_path,
                                                                          monkeypatch):
    # epoch:             0     1    2    3       | 2    3
    pgd, fgsm = [0.25, 0.5, 0.5, 0.0625, 0.5, 0.45], [0.25, 0.375, 0.5, 0.625, 0.5, 0.5]
    scripted_probes(monkeypatch, pgd, fgsm)
    res = build_trainer(_cfg(tmp_path, "w", epochs=4), _dataset()).fit()
    mon = res["monitor"]
    assert not mon["co_detected"] and mon["ends_in_co"]       # a candidate, not confirmed
    assert _rows(_cfg(tmp_path, "w"))[-1]["co_candidate"]

    scripted_probes(monkeypatch, pgd, fgsm)
    cfg = _cfg(tmp_path, "rb", method="rs-fgsm", method_hparams={}, on_co="rollback",
               epochs=4)
    trainer = build_trainer(cfg, _dataset())
    starts = _spy_epochs(trainer)
    res = trainer.fit()
    mon = res["monitor"]
    ev = mon["events"][0]
    assert (ev["epoch"], ev["onset_epoch"], ev["confirmed_by"]) == (3, 3, "last probe")
    assert mon["rollbacks"][0]["restored_from"]["epoch"] == 1       # the first 0.5
    assert [e for e, _, _ in starts] == [0, 1, 2, 3, 2, 3]
    assert mon["outcome"] == "rescued after 1 rollback(s)" and not mon["ends_in_co"]
    log = (tmp_path / "rb" / "train.log").read_text()
    assert "CO candidate at the last probe (epoch 3)" in log


def test_rollback_to_a_best_probe_between_two_steps(tmp_path, monkeypatch):
    # 3 steps an epoch, a probe every 2 steps and at each epoch end; the best probe is at
    # step 4, inside epoch 1: the rollback returns there, partial sums and all
    scripted_probes(monkeypatch, [0.25, 0.3, 0.5, 0.0625, 0.0625, 0.5, 0.5, 0.5],
              [0.25, 0.3, 0.5, 0.625, 0.625, 0.5, 0.5, 0.5])
    cfg = _cfg(tmp_path, "mid", method="rs-fgsm", method_hparams={}, on_co="rollback",
               probe_every=2, epochs=3)
    res = build_trainer(cfg, _dataset()).fit()
    rb = res["monitor"]["rollbacks"][0]
    assert (rb["restored_from"]["epoch"], rb["restored_from"]["step"]) == (1, 4)
    assert rb["epochs_discarded"] == pytest.approx(4 / 3)      # steps 5..8 of 9
    rows = _rows(cfg)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all(r["n"] == 192 for r in rows)
    assert res["monitor"]["outcome"] == "rescued after 1 rollback(s)"


def test_rollback_survives_a_resume(tmp_path, monkeypatch):
    """Killed after the rollback: the resumed run keeps the rollback, the strengthened
    method and the rewind point, and ends as the uninterrupted run."""
    seq = ([0.25, 0.5, 0.125, 0.125, 0.375, 0.375, 0.4, 0.45],
           [0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    scripted_probes(monkeypatch, *seq)
    ref = build_trainer(_cfg(tmp_path, "ref", method="rs-fgsm", method_hparams={},
                             on_co="rollback", epochs=6), _dataset()).fit()
    calls = scripted_probes(monkeypatch, *seq)
    cfg = _cfg(tmp_path, "cut", method="rs-fgsm", method_hparams={}, on_co="rollback",
               epochs=6)
    trainer = build_trainer(cfg, _dataset())
    run_epoch = trainer.run_epoch

    class Killed(Exception):
        pass

    def spy(epoch):
        end = run_epoch(epoch)
        if len(calls) == 5:                   # epoch 2's second run is checkpointed
            raise Killed()
        return end
    trainer.run_epoch = spy
    with pytest.raises(Killed):
        trainer.fit()
    trainer.close()
    from aaer.training import resume
    res = resume(cfg.out_dir, dataset=_dataset())
    assert res["monitor"]["rollbacks"][0]["param"] == "alpha"
    assert res["monitor"]["outcome"] == ref["monitor"]["outcome"]
    a = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert _same(a, b)


def test_rollback_that_cannot_apply_fails_before_training(tmp_path):
    cfg = _cfg(tmp_path, "bad", method="rs-fgsm", method_hparams={}, on_co="rollback",
               rollback_change="regularizer")
    with pytest.raises(ValueError, match="no regulariser weight"):
        build_trainer(cfg, _dataset())


@pytest.mark.parametrize("kw, msg", [
    ({"probe_n": 0, "on_co": "stop"}, "--on-co stop needs the CO probe"),
    ({"on_co": "panic"}, "invalid --on-co 'panic'"),
    ({"probe_every": -1}, "--probe-every"),
    ({"co_drop": 0.0}, "--co-drop"),
    ({"co_patience": 0}, "--co-patience"),
    ({"co_rel_drop": -0.5}, "--co-rel-drop"),
    ({"co_fgsm_ratio": -1.0}, "--co-fgsm-ratio"),
    ({"probe_source": "train"}, "--probe-source"),
    ({"rollback_step_factor": 1.5}, "--rollback-step-factor"),
    ({"rollback_reg_factor": 0.5}, "--rollback-reg-factor"),
])
def test_config_errors_name_the_bad_value(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        _cfg(tmp_path, "x", **kw).resolve(custom_data=True)


def test_probe_every_n_steps_and_a_mid_epoch_stop(tmp_path, monkeypatch):
    # 3 steps per epoch, a probe every 2 steps plus one at each epoch end
    scripted_probes(monkeypatch, [0.25, 0.5, 0.5, 0.0625, 0.0], [0.25, 0.5, 0.5, 0.5, 0.5])
    cfg = _cfg(tmp_path, "steps", probe_every=2, on_co="stop", epochs=3)
    res = build_trainer(cfg, _dataset()).fit()
    with open(tmp_path / "steps" / "probes.jsonl") as f:
        probes = [json.loads(l) for l in f]
    assert [(p["epoch"], p["step"]) for p in probes] == [(0, 2), (0, 3), (1, 4), (1, 6), (2, 8)]
    assert probes[3]["co_candidate"] and "co" not in probes[3] and probes[4]["co"] is True
    rows = _rows(cfg)
    # CO confirmed at step 8, the 2nd of epoch 2's 3 batches: the epoch is cut short there
    assert len(rows) == 3 and rows[2]["co_stop"] and rows[2]["n"] == 128
    assert rows[2]["co_flag"] and rows[2]["probe_pgd_acc"] == 0.0
    stopped = res["monitor"]["stopped"]
    assert stopped["step"] == 8 and stopped["restored_from"]["step"] == 3  # the first 0.5
    assert res["monitor"]["co_epoch"] == 1 and res["monitor"]["events"][0]["onset_step"] == 6


def test_probing_does_not_change_training(tmp_path):
    ds = _dataset()
    plain = build_trainer(_cfg(tmp_path, "plain", probe_n=0, epochs=2), ds).fit()
    probed = build_trainer(_cfg(tmp_path, "probed", probe_every=2, probe_steps=3, epochs=2),
                     ds).fit()
    a, b = plain["final_epoch"], probed["final_epoch"]
    assert a["train_loss"] == b["train_loss"] and a["aae_count"] == b["aae_count"]
    assert "probe_pgd_acc" in b and "probe_pgd_acc" not in a


def test_measure_equals_the_evaluation_suite(tmp_path):
    from aaer.evaluation import Protocol, evaluate
    ds = _dataset()
    trainer = build_trainer(_cfg(tmp_path, "m", epochs=1), ds)
    trainer.fit()
    got = trainer.monitor.measure(trainer.model)
    rep = evaluate(trainer.model, ds.test_x[:32], ds.test_y[:32], 32 / 255,
                   Protocol("p", pgd_steps=10, pgd_restarts=1), seed=0)["results"]
    assert (got["clean"], got["fgsm"], got["pgd"]) == \
        (rep["clean"]["acc"], rep["fgsm"]["acc"], rep["pgd"]["acc"])
    assert trainer.model.training            # the probe restores train mode


# -- per-class AAE counts --------------------------------------------------------------

def test_aae_statistics_per_class():
    l0 = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    l1 = torch.tensor([0.5, 2.5, 0.25, 1.0, 1.0])   # AAEs: 0, 2, 3 (l0 > l1)
    y = torch.tensor([0, 1, 0, 2, 2])
    z = torch.zeros(5, 3)
    s = aae_statistics(z, z, l0, l1, y, num_classes=4)
    assert s["aae_count"].item() == 3
    assert s["aae_count_per_class"].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert s["n_per_class"].tolist() == [2.0, 1.0, 2.0, 0.0]
    out = summarize_aae({k: v.tolist() if v.dim() else float(v) for k, v in s.items()}, 5)
    assert out["aae_count_per_class"] == [2, 0, 1, 0]
    assert out["aae_fraction_per_class"] == [1.0, 0.0, 0.5, 0.0]
    assert "aae_count_per_class" not in aae_statistics(z, z, l0, l1)


def test_trainer_logs_per_class_counts(tmp_path):
    cfg = _cfg(tmp_path, "pc", probe_n=0, epochs=1, aae_per_class=True, method="rs-fgsm",
               method_hparams={})
    row = build_trainer(cfg, _dataset()).fit()["final_epoch"]
    assert len(row["aae_count_per_class"]) == 4
    assert sum(row["aae_count_per_class"]) == row["aae_count"]
    assert all(0.0 <= f <= 1.0 for f in row["aae_fraction_per_class"])


def test_cli_flags_reach_the_config():
    from aaer.cli import build_parser, config_from_args
    args = build_parser().parse_args([
        "train", "--method", "rs-fgsm", "--probe-n", "300", "--probe-source", "holdout",
        "--probe-every", "50", "--on-co", "rollback", "--co-drop", "0.3", "--co-reference",
        "previous", "--co-fgsm-ratio", "0", "--co-rel-drop", "0.5", "--co-min-drop", "0.1",
        "--co-gap", "0.3", "--co-floor", "0.02",
        "--co-patience", "1", "--rollback-change", "step", "--rollback-step-factor", "0.5",
        "--rollback-reg-factor", "3", "--max-rollbacks", "4", "--aae-per-class"])
    cfg = config_from_args(args)
    cfg.validate()
    assert (cfg.probe_n, cfg.probe_source, cfg.probe_every, cfg.on_co) == \
        (300, "holdout", 50, "rollback")
    assert (cfg.co_drop, cfg.co_reference, cfg.co_fgsm_ratio, cfg.co_rel_drop, cfg.co_min_drop,
            cfg.co_patience, cfg.co_gap, cfg.co_floor) == (0.3, "previous", 0.0, 0.5, 0.1, 1,
                                                           0.3, 0.02)
    assert (cfg.rollback_change, cfg.rollback_step_factor, cfg.rollback_reg_factor,
            cfg.max_rollbacks, cfg.aae_per_class) == ("step", 0.5, 3.0, 4, True)
    from aaer.monitor import rule_from_config
    assert rule_from_config(cfg.resolve().monitor) == CORule(drop=0.3, reference="previous", fgsm_ratio=None,
                                           rel_drop=0.5, patience=1, min_drop=0.1, gap=0.3,
                                           floor=0.02)
