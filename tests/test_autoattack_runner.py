"""The AutoAttack runner: versions, the ensemble property, resuming, sanity checks."""

import warnings

import pytest
import torch

from aaer.attacks import checks
from aaer.attacks.autoattack import AutoAttack
from aaer.attacks.checks import AutoAttackWarning

# shrunk gradient attacks (10 iterations) leave points for Square, which then warns
pytestmark = pytest.mark.filterwarnings("ignore:Square Attack lowered")


def small_cnn(seed=0, n_classes=10):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, n_classes)).eval()


def data(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10          # a few points misclassified from the start
    return x, y


def shrink(aa):
    """Fewer iterations/targets/queries; the properties tested do not depend on them."""
    for name, attack in aa.attacks.items():
        if hasattr(attack, "n_iter"):
            attack.n_iter = 10
        if hasattr(attack, "n_target_classes"):
            attack.n_target_classes = 3
        if hasattr(attack, "n_queries"):
            attack.n_queries = 100
        if name in ("apgd-ce", "apgd-dlr", "fab"):
            attack.n_restarts = 1
    return aa


EPS = 2 / 255


def test_version_settings_are_the_official_ones():
    m = small_cnn()
    std = AutoAttack(m, version="standard").attacks
    assert AutoAttack(m).attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (std["apgd-ce"].n_iter, std["apgd-ce"].n_restarts, std["apgd-ce"].loss,
            std["apgd-ce"].rho, std["apgd-ce"].eot_iter) == (100, 1, "ce", .75, 1)
    assert (std["apgd-t"].n_iter, std["apgd-t"].n_restarts,
            std["apgd-t"].n_target_classes) == (100, 1, 9)
    fab = std["fab-t"]
    assert (fab.n_iter, fab.n_restarts, fab.n_target_classes, fab.alpha_max, fab.eta,
            fab.beta, fab.targeted) == (100, 1, 9, 0.1, 1.05, 0.9, True)
    assert (std["square"].n_queries, std["square"].p_init, std["square"].n_restarts,
            std["square"].rescale_schedule) == (5000, .8, 1, False)
    rand = AutoAttack(m, version="rand")
    assert rand.attacks_to_run == ["apgd-ce", "apgd-dlr"]
    assert all(rand.attacks[a].eot_iter == 20 and rand.attacks[a].n_restarts == 1
               for a in rand.attacks_to_run)
    custom = AutoAttack(m, version="custom", attacks_to_run=["apgd-dlr", "square"])
    assert custom.attacks_to_run == ["apgd-dlr", "square"]
    assert custom.attacks["apgd-dlr"].n_restarts == 5     # the official default


def test_ensemble_is_never_less_successful_than_any_component():
    model = small_cnn()
    x, y = data(model)
    aa = shrink(AutoAttack(model, eps=EPS, batch_size=16))
    res = aa.run(x, y)
    accs = [res["clean_acc"]] + [res["per_attack"][a] for a in aa.attacks_to_run]
    assert accs == sorted(accs, reverse=True)
    assert res["robust_acc"] == accs[-1] == aa.robust_mask.sum().item() / len(y)
    assert 0 < res["robust_acc"] < res["clean_acc"] == 0.9
    for name in aa.attacks_to_run:
        alone = shrink(AutoAttack(model, eps=EPS, batch_size=16, version="custom",
                                  attacks_to_run=[name]))
        r = alone.run(x, y)
        assert res["robust_acc"] <= r["robust_acc"], name
        if name == "apgd-ce":   # first in the ensemble: the same run, so a subset exactly
            assert not (aa.robust_mask & ~alone.robust_mask).any()
    # the adversarial examples are real: within eps, in the box, misclassified
    pert = (aa.x_adv - x).flatten(1).abs().amax(1)
    assert pert.max() <= EPS + 1e-6 and aa.x_adv.min() >= 0 and aa.x_adv.max() <= 1
    wrong = model(aa.x_adv).argmax(1) != y
    assert torch.equal(wrong, ~aa.robust_mask)
    assert torch.equal(aa.x_adv[aa.robust_mask], x[aa.robust_mask])


def test_same_seed_same_result():
    model = small_cnn()
    x, y = data(model)
    a = shrink(AutoAttack(model, eps=EPS, batch_size=16))
    b = shrink(AutoAttack(model, eps=EPS, batch_size=16))
    ra, rb = a.run(x, y), b.run(x, y)
    assert ra["per_attack"] == rb["per_attack"]
    assert torch.equal(a.x_adv, b.x_adv)


class Interrupted(Exception):
    pass


class Flaky(torch.nn.Module):
    """Wraps a model and raises on its `fail_at`-th call, like a killed job."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls, self.fail_at = 0, None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise Interrupted
        return self.inner(x)


def make_custom(model, state_path=None):
    return shrink(AutoAttack(model, eps=EPS, version="custom", batch_size=8,
                             attacks_to_run=["apgd-ce", "apgd-t"], state_path=state_path))


def test_resume_after_interruptions_gives_the_uninterrupted_result(tmp_path):
    model = Flaky(small_cnn()).eval()
    x, y = data(model.inner)
    full = make_custom(model)
    ref = full.run(x, y)

    path = tmp_path / "aa_state.pt"
    # 12 calls for the checks and the clean pass, 13 per APGD-CE batch of 10 iterations
    model.calls, model.fail_at = 0, 12 + 2 * 13 + 5
    with pytest.raises(Interrupted):
        make_custom(model, path).run(x, y)
    state = torch.load(path, weights_only=True)
    assert state["done"] == [] and state["current"]["attack"] == "apgd-ce"
    assert state["current"]["batches_done"] == 2

    # resume: 7 calls for the checks, 3 APGD-CE batches left, then die in APGD-T's 2nd
    # batch (<= 38 calls per batch of 3 targets)
    model.calls, model.fail_at = 0, 7 + 3 * 13 + 38 + 10
    with pytest.raises(Interrupted):
        make_custom(model, path).run(x, y)
    state = torch.load(path, weights_only=True)
    assert state["done"] == ["apgd-ce"] and state["current"]["attack"] == "apgd-t"
    assert 1 <= state["current"]["batches_done"] < 4
    assert state["per_attack"]["apgd-ce"] == ref["per_attack"]["apgd-ce"]

    model.calls, model.fail_at = 0, None
    resumed = make_custom(model, path)
    res = resumed.run(x, y)
    assert res["per_attack"] == ref["per_attack"] and res["robust_acc"] == ref["robust_acc"]
    assert res["clean_acc"] == ref["clean_acc"]
    assert torch.equal(resumed.x_adv, full.x_adv)
    assert torch.equal(resumed.robust_mask, full.robust_mask)
    assert [p.name for p in tmp_path.iterdir()] == ["aa_state.pt"]   # no temp files left

    # a finished state is reused: only the sanity checks touch the model
    model.calls = 0
    again = make_custom(model, path)
    assert again.run(x, y)["per_attack"] == ref["per_attack"]
    assert model.calls <= 8 and torch.equal(again.x_adv, full.x_adv)


def test_state_of_another_evaluation_is_refused(tmp_path):
    model = small_cnn()
    x, y = data(model, n=8)
    path = tmp_path / "state.pt"
    aa = shrink(AutoAttack(model, eps=EPS, version="custom", attacks_to_run=["apgd-ce"],
                           state_path=path))
    aa.run(x, y)
    other_eps = shrink(AutoAttack(model, eps=EPS * 2, version="custom",
                                  attacks_to_run=["apgd-ce"], state_path=path))
    with pytest.raises(ValueError, match="differs in: .*eps"):
        other_eps.run(x, y)
    x_other = x.clone()
    x_other[0, 0, 0, 0] = 1 - x_other[0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"differs in: x\)"):
        aa.run(x_other, y)
    other_model = shrink(AutoAttack(small_cnn(seed=1), eps=EPS, version="custom",
                                    attacks_to_run=["apgd-ce"], state_path=path))
    with pytest.raises(ValueError, match="differs in: model"):
        other_model.run(x, y)
    path.write_text("not a state")
    with pytest.raises(ValueError, match="not a readable AutoAttack state"):
        aa.run(x, y)


def test_log_file_gets_the_progress(tmp_path):
    model = small_cnn()
    x, y = data(model, n=8)
    log = tmp_path / "aa.log"
    shrink(AutoAttack(model, eps=EPS, version="custom", attacks_to_run=["apgd-ce"],
                      log=str(log))).run(x, y)
    text = log.read_text()
    assert "clean accuracy 50.00%" in text and "robust accuracy after apgd-ce" in text


@pytest.mark.parametrize("kwargs,match", [
    (dict(version="fast"), "version='fast'.*standard"),
    (dict(attacks_to_run=["apgd-ce"]), "only used with version='custom'"),
    (dict(version="custom"), "needs attacks_to_run"),
    (dict(version="custom", attacks_to_run=["pgd"]), r"unknown attack\(s\) \['pgd'\]"),
    (dict(version="custom", attacks_to_run=["square", "square"]), "twice"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(norm="L1"), "norm='L1'"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoAttack(small_cnn(), **kwargs)


def test_probability_outputs_are_flagged_during_a_run():
    model = torch.nn.Sequential(small_cnn(), torch.nn.Softmax(dim=1)).eval()
    x, y = data(model, n=8)
    aa = shrink(AutoAttack(model, eps=EPS, version="custom", attacks_to_run=["apgd-ce"]))
    with pytest.warns(AutoAttackWarning, match="probability distribution"):
        aa.run(x, y)


class Noisy(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


class SelfAdapting(torch.nn.Module):
    """Takes a gradient step on its own entropy inside forward (a dynamic defense)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.enable_grad():
            x2 = x.detach().clone().requires_grad_()
            g = torch.autograd.grad(self.inner(x2).logsumexp(1).sum(), x2)[0]
        return self.inner(x - 0.01 * g.sign())


def test_sanity_checks_flag_what_they_should_and_nothing_else():
    model = small_cnn()
    x, y = data(model, n=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutoAttackWarning)   # the clean model: no warning
        assert checks.check_randomized(model, x, y) is False
        assert checks.check_range_output(model, x) == 10
        assert checks.check_dynamic(model, x) is False
        assert checks.check_eval_mode(model) is False
        assert checks.check_zero_gradients(torch.ones(3, 2)) == 0
        assert checks.check_square_sr({"clean": .9, "apgd-ce": .5, "square": .499}) is False
    with pytest.warns(AutoAttackWarning, match="not deterministic"):
        assert checks.check_randomized(Noisy(model), x, y)
    with pytest.warns(AutoAttackWarning, match="computes gradients"):
        assert checks.check_dynamic(SelfAdapting(model), x)
    with pytest.warns(AutoAttackWarning, match="training mode"):
        assert checks.check_eval_mode(small_cnn().train())
    with pytest.warns(AutoAttackWarning, match="2 of 3 points have a zero input gradient"):
        assert checks.check_zero_gradients(torch.tensor([[0., 0.], [1., 0.], [0., 0.]])) == 2
    with pytest.warns(AutoAttackWarning, match="Square Attack lowered"):
        assert checks.check_square_sr({"clean": .9, "apgd-ce": .5, "square": .4})


def test_masked_gradients_are_flagged_by_apgd_dlr():
    inner = small_cnn()

    class Masked(torch.nn.Module):
        def forward(self, x):
            return inner(x * 0 + x.detach())   # a gradient of exactly zero

    x, y = data(inner, n=8)
    aa = shrink(AutoAttack(Masked().eval(), eps=EPS, version="custom", attacks_to_run=["apgd-dlr"]))
    with pytest.warns(AutoAttackWarning, match="zero input gradient"):
        res = aa.run(x, y)
    assert res["per_attack"]["apgd-dlr"] == res["clean_acc"]   # nothing found without gradients
