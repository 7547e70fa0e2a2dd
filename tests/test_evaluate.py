"""The evaluation suite: named protocols, the AutoAttack entry, resume, backends, AMP."""
import sys

import pytest
import torch

from aaer.evaluation import PROTOCOLS, evaluate, format_table, get_protocol

EPS = 8 / 255


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_ten_class(n=60, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3 * 8 * 8, 10)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = 0.1 + 0.8 * torch.rand(n, 3, 8, 8)      # interior: the box never binds at eps
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:6] = (y[:6] + 1) % 10                      # a few wrong from the start
    return model, lin, x, y


def true_robust(lin, x, y, eps):
    """Linear model, L-inf ball: robust iff z_y - z_k > eps * ||w_y - w_k||_1 for all k."""
    with torch.no_grad():
        z = lin(x.flatten(1))
        w = lin.weight
        margin = z.gather(1, y[:, None]) - z
        dw = (w[y][:, None, :] - w[None]).abs().sum(2)
        ok = margin > eps * dw
        ok[torch.arange(len(y)), y] = True
    return ok.all(1)


def fast_aa(aa):
    """Fewer iterations so the whole standard version runs in seconds."""
    for a in aa.attacks.values():
        if hasattr(a, "n_iter"):
            a.n_iter = 10
        if hasattr(a, "n_target_classes"):
            a.n_target_classes = 3
    aa.attacks["square"].n_queries = 30


def test_named_protocols():
    aaer = PROTOCOLS["aaer"]
    assert aaer.attacks == ("clean", "fgsm", "pgd", "autoattack")
    assert (aaer.pgd_steps, aaer.pgd_restarts, aaer.n_eval) == (50, 10, None)
    assert aaer.pgd_alpha(EPS) == EPS / 4 and aaer.aa_version == "standard"
    assert PROTOCOLS["wong"].pgd_alpha(EPS) == 2 / 255
    assert PROTOCOLS["gradalign-1k"].n_eval == 1000
    assert (PROTOCOLS["quick"].pgd_steps, PROTOCOLS["quick"].pgd_restarts) == (10, 1)
    for name in ("lineage", "lineage-exact", "wong", "gradalign-1k", "quick"):
        assert "autoattack" not in PROTOCOLS[name].attacks
    assert PROTOCOLS["lineage-exact"].selection == "max-loss"
    # custom settings rename the protocol; settings equal to the protocol's do not
    assert get_protocol("lineage", pgd_steps=50).name == "lineage"
    p = get_protocol("lineage", attacks=["clean", "autoattack"], aa_attacks=["apgd-ce"])
    assert p.name == "lineage+custom" and p.aa_version == "custom"
    with pytest.raises(ValueError, match="unknown attack.*valid: clean, fgsm, pgd, autoattack"):
        get_protocol("lineage", attacks=["clean", "cw"])
    with pytest.raises(ValueError, match="needs its attacks"):
        get_protocol("aaer", aa_version="custom")
    with pytest.raises(ValueError, match="only used with --aa-version custom"):
        get_protocol("aaer", aa_version="plus", aa_attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="unknown protocol 'nope'.*aaer"):
        get_protocol("nope")


def test_aaer_protocol_reports_autoattack_with_its_parameters():
    model, lin, x, y = linear_ten_class()
    eps = 2 / 255
    rep = evaluate(model, x, y, eps, "aaer", seed=3, _aa_tune=fast_aa)
    robust = int(true_robust(lin, x, y, eps).sum()) / 60
    clean = int((model(x).argmax(1) == y).sum()) / 60
    assert 0.2 < robust < 0.8                      # a non-trivial mix
    assert rep["protocol"]["name"] == "aaer" and rep["n"] == 60 and rep["batch_size"] == 256
    for attack, r in rep["results"].items():
        assert r["protocol"] == "aaer" and r["n"] == 60 and r["seed"] == 3, attack
    aa = rep["results"]["autoattack"]
    assert aa["version"] == "standard" and aa["norm"] == "Linf" and aa["eps"] == eps
    assert aa["backend"] == "native"
    assert list(aa["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["clean_acc"] == clean == rep["results"]["clean"]["acc"]
    assert aa["acc"] == aa["per_attack"]["square"] <= aa["per_attack"]["apgd-ce"] <= clean
    # no attack can break a provably robust point; here AutoAttack finds every other one
    assert aa["acc"] == robust
    # PGD on cross-entropy misses two points here that the targeted attacks break
    assert round(rep["results"]["pgd"]["acc"] * 60) == round(robust * 60) + 2
    table = format_table(rep)
    assert "autoattack" in table and "after apgd-t" in table and "backend=native" in table


def test_autoattack_resumes_through_evaluate(tmp_path):
    model, _, x, y = linear_ten_class(n=40, seed=1)
    proto = get_protocol("quick", attacks=["clean", "autoattack"],
                         aa_attacks=["apgd-ce", "apgd-t"])
    state = tmp_path / "autoattack_state.pt"

    def tune(aa):
        fast_aa(aa)

    full = evaluate(model, x, y, EPS, proto, _aa_tune=tune)["results"]["autoattack"]

    def interrupted(aa):
        fast_aa(aa)
        def stop(*a, **k):
            raise KeyboardInterrupt
        aa.attacks["apgd-t"].perturb = stop

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, EPS, proto, aa_state_path=str(state), _aa_tune=interrupted)
    assert state.exists() and not model.training

    def resumed(aa):
        fast_aa(aa)
        def must_not_run(*a, **k):
            raise AssertionError("apgd-ce finished before the interruption; resume skips it")
        aa.attacks["apgd-ce"].perturb = must_not_run

    again = evaluate(model, x, y, EPS, proto, aa_state_path=str(state),
                     _aa_tune=resumed)["results"]["autoattack"]
    assert not state.exists()                      # deleted once complete
    assert again["per_attack"] == full["per_attack"] and again["acc"] == full["acc"]
    assert full["per_attack"]["apgd-t"] < full["clean_acc"]
    assert again["version"] == "custom" and again["attacks"] == ["apgd-ce", "apgd-t"]


def test_official_backend_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)     # import autoattack fails
    model, _, x, y = linear_ten_class(n=8)
    with pytest.raises(ValueError, match=r"not installed \(pip install git\+https://github"
                       r".com/fra31/auto-attack\).*native"):
        evaluate(model, x, y, EPS, "aaer", aa_backend="official")
    with pytest.raises(ValueError, match="aa_backend 'fast'.*native, official"):
        evaluate(model, x, y, EPS, "aaer", aa_backend="fast")


def test_eval_precision_is_recorded():
    model, _, x, y = linear_ten_class(n=40)
    proto = get_protocol("quick", pgd_steps=3)
    fp32 = evaluate(model, x, y, EPS, proto)
    bf16 = evaluate(model, x, y, EPS, proto, precision="bf16")
    assert "precision" not in fp32 and "precision" not in fp32["results"]["pgd"]
    assert bf16["precision"] == "bf16"
    assert all(r["precision"] == "bf16" for r in bf16["results"].values())
    assert "precision bf16" in format_table(bf16)
    # bf16 logits differ from fp32 ones, the clean accuracy barely
    assert abs(bf16["results"]["clean"]["acc"] - fp32["results"]["clean"]["acc"]) <= 2 / 40
    assert bf16["results"]["clean"]["loss"] != fp32["results"]["clean"]["loss"]
    with pytest.raises(ValueError, match="precision 'fp8'.*fp32, bf16, fp16"):
        evaluate(model, x, y, EPS, proto, precision="fp8")


def test_cli_eval_writes_autoattack_results(tmp_path, capsys, monkeypatch):
    import json

    from aaer.cli import main
    from tests.helpers.files import linear_checkpoint_dir
    linear_checkpoint_dir(tmp_path, n_test=48)
    args = ["eval", "--checkpoint", str(tmp_path), "--protocol", "quick", "--n-eval", "40",
            "--attacks", "clean,autoattack", "--aa-version", "custom", "--aa-attacks",
            "apgd-ce", "--device", "cpu", "--seed", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "autoattack" in out and "after apgd-ce" in out
    rep = json.loads((tmp_path / "eval_quick+custom.json").read_text())
    aa = rep["results"]["autoattack"]
    assert (aa["n"], aa["seed"], aa["protocol"], aa["version"]) == (40, 2, "quick+custom",
                                                                    "custom")
    assert aa["attacks"] == ["apgd-ce"] and aa["acc"] <= aa["clean_acc"]
    assert aa["clean_acc"] == rep["results"]["clean"]["acc"]
    assert not (tmp_path / "autoattack_state_quick+custom.pt").exists()
    monkeypatch.setitem(sys.modules, "autoattack", None)
    assert main(args + ["--aa-backend", "official"]) == 2
    assert "not installed" in capsys.readouterr().err
    assert main(args[:-4] + ["--attacks", "clean,cw"]) == 2
    assert "unknown attack(s) ['cw']" in capsys.readouterr().err
