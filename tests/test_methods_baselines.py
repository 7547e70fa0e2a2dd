"""The baselines: GradAlign, ZeroGrad, MultiGrad, PGD-AT, Free-AT, ELLE, ELLE-A.

Each mechanism is checked against an independent computation (closed forms, torch.quantile,
separately computed gradients, a hand-written replay loop), then every registered method
runs a short training through aaer.training.train.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.elle import ELLE, ELLEA, linearity_error, sample_triplet
from aaer.methods.elle import published_lamda as elle_lamda
from aaer.methods.free import FreeAT
from aaer.methods.gradalign import (GradAlign, gradalign_penalty, gradient_cosine,
                                    published_lamda as gradalign_lamda)
from aaer.methods.multigrad import MultiGrad, sign_agreement
from aaer.methods.pgd_at import PGDAT, pgd_perturbation
from aaer.methods.zerograd import ZeroGrad, per_example_quantile, zero_small_gradients
from tests.helpers.tiny import TinyNet, tiny_dataset

EPS = 8 / 255
CTX = StepContext()


def mlp(seed=0, d=3 * 4 * 4, hidden=16, classes=5, dtype=torch.float32):
    """A tanh MLP: its input gradient depends smoothly on the weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.Tanh(),
                         nn.Linear(hidden, classes)).to(dtype)


def curved_net(seed=0):
    """TinyNet on sin(50 x) in eval mode: input gradients and losses that change a lot
    within the eps-ball, with deterministic BatchNorm."""
    torch.manual_seed(seed)
    return TinyNet(freq=50.0).eval()


def image_batch(n=8, seed=1):
    return batch(n=n, seed=seed, shape=(3, 8, 8), classes=10)


def batch(n=8, seed=1, shape=(3, 4, 4), classes=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


# -- GradAlign ------------------------------------------------------------------------

def test_gradalign_penalty_closed_forms():
    g = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert gradalign_penalty(g, 3.0 * g).item() == pytest.approx(0.0, abs=1e-6)
    assert gradalign_penalty(g, -0.5 * g).item() == pytest.approx(2.0, abs=1e-6)
    e1, e2 = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    e1[:, 0, 0, 0] = 1.0
    e2[:, 0, 1, 1] = 2.0
    assert gradalign_penalty(e1, e2).item() == pytest.approx(1.0)      # orthogonal
    # an example with a zero gradient is left out of the mean (as in the authors' code)
    g2 = -g.clone()
    g2[0] = 0.0
    cos, valid = gradient_cosine(g, g2)
    assert valid.tolist() == [False, True, True, True]
    assert cos[0].item() == 0.0
    assert gradalign_penalty(g, g2).item() == pytest.approx(2.0, abs=1e-6)


def test_gradalign_published_lamda():
    # the authors' CIFAR-10 scripts: 0.027 at 1, 0.2 at 8, 0.632 at 12, 1.124 at 14, 2.0 at 16
    for eps255, lam in [(1, 0.027), (4, 0.063), (8, 0.2), (12, 0.632), (14, 1.124), (16, 2.0)]:
        assert gradalign_lamda(eps255) == pytest.approx(lam, abs=1e-3)   # 3 decimals
    assert gradalign_lamda(24) == 2.0
    assert GradAlign(16 / 255).lamda == pytest.approx(2.0)
    assert GradAlign.train_overrides == {"lr_max": 0.3}


def test_gradalign_penalty_gradient_reaches_weights_through_input_gradient():
    model = mlp(dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    torch.manual_seed(3)
    eta = torch.empty_like(x).uniform_(-EPS, EPS)

    x1 = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(F.cross_entropy(model(x1), y), x1)   # a constant, as in GradAlign

    def penalty():
        x2 = (x + eta).requires_grad_(True)
        (g2,) = torch.autograd.grad(F.cross_entropy(model(x2), y), x2, create_graph=True)
        return gradalign_penalty(g1, g2)

    w = model[1].weight
    (dw,) = torch.autograd.grad(penalty(), w)
    assert dw.abs().max().item() > 1e-6
    # the double-backprop derivative matches a central finite difference (g1 fixed)
    i, j, h = 3, 7, 1e-6
    w0 = w[i, j].item()
    with torch.no_grad():
        w[i, j] = w0 + h
    up = penalty().item()
    with torch.no_grad():
        w[i, j] = w0 - h
    down = penalty().item()
    assert dw[i, j].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_gradalign_step_adds_lamda_times_penalty():
    model = curved_net()
    x, y = image_batch()
    outs = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(5)
        out = GradAlign(EPS, lamda=lam).step(model, x, y, CTX)
        outs[lam] = out
    # the FGSM part is deterministic (zero start), so the difference is lamda * penalty
    cos = outs[0.5].stats["gradalign_cos_sum"] / outs[0.5].stats["gradalign_valid"]
    assert (outs[0.5].loss - outs[0.0].loss).item() == pytest.approx(
        0.5 * (1 - cos.item()), rel=1e-4)
    assert -1.0 <= cos.item() < 0.99
    assert outs[0.5].stats["aae_count"].dim() == 0
    model.zero_grad()
    outs[0.5].loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# -- ZeroGrad -------------------------------------------------------------------------

def test_zerograd_zeroes_exactly_below_the_per_example_quantile():
    g = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.35, 0.45, 0.9):
        ref_q = torch.quantile(g.abs().flatten(1), q, dim=1)
        assert torch.allclose(per_example_quantile(g.abs(), q), ref_q, rtol=0, atol=1e-6)
        zg, zeroed = zero_small_gradients(g, q)
        expected = g.abs() < ref_q.view(-1, 1, 1, 1)
        assert torch.equal(zeroed, expected)
        assert torch.equal(zg, torch.where(expected, torch.zeros_like(g), g))
        frac = zeroed.flatten(1).float().mean(1)
        assert torch.allclose(frac, torch.full_like(frac, q), atol=1 / 192 + 1e-6)


def test_zerograd_step_is_the_manual_attack():
    model = mlp().eval()
    x, y = batch()
    method = ZeroGrad(EPS, q=0.35)
    torch.manual_seed(11)
    out = method.step(model, x, y, CTX)
    torch.manual_seed(11)
    eta = torch.clamp(x + torch.empty_like(x).uniform_(-EPS, EPS), 0, 1) - x
    xe = (x + eta).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xe), y), xe)
    thr = torch.quantile(g.abs().flatten(1), 0.35, dim=1).view(-1, 1, 1, 1)
    g = torch.where(g.abs() < thr, torch.zeros_like(g), g)
    delta = (eta + 2 * EPS * g.sign()).clamp(-EPS, EPS)
    assert torch.allclose(out.logits, model((x + delta).clamp(0, 1)), atol=1e-6)
    # zeroed coordinates keep the start noise eta
    assert (g == 0).float().mean().item() == pytest.approx(0.35, abs=0.01)


# -- MultiGrad ------------------------------------------------------------------------

def test_multigrad_mask_matches_three_separate_gradients():
    model = curved_net()
    x, y = image_batch()
    method = MultiGrad(EPS)
    torch.manual_seed(21)
    grads = method.sample_gradients(model, x, y)
    direction, keep = sign_agreement(grads, method.agree)
    # manual: the same three noise draws, three separate passes (eval mode: no BN coupling)
    torch.manual_seed(21)
    noise = torch.empty(3 * x.shape[0], *x.shape[1:]).uniform_(-EPS, EPS)
    manual = []
    for s in range(3):
        xs = x + (torch.clamp(x + noise[s * 8:(s + 1) * 8], 0, 1) - x)
        xs.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xs), y), xs)
        manual.append(g)
    signs = [g.sign() for g in manual]
    agree = (signs[0] == signs[1]) & (signs[1] == signs[2]) & (signs[0] != 0)
    assert torch.equal(keep, agree)
    assert torch.equal(direction, torch.where(agree, signs[0], torch.zeros_like(signs[0])))
    assert 0.05 < agree.float().mean().item() < 0.95        # a real mix of kept and dropped
    # the step: x_adv = x + eps * direction (from zero, alpha = 2 eps, projected)
    torch.manual_seed(21)
    out = method.step(model, x, y, CTX)
    assert torch.allclose(out.logits, model((x + EPS * direction).clamp(0, 1)), atol=1e-6)
    assert out.stats["multigrad_kept_sum"].item() == pytest.approx(
        agree.flatten(1).float().mean(1).sum().item(), rel=1e-6)


def test_multigrad_majority_vote():
    g = torch.tensor([[[1.0, 1.0, -1.0, 0.0]], [[2.0, -1.0, -3.0, 1.0]],
                      [[0.5, 1.0, -1.0, 1.0]]])            # S = 3, B = 1, 4 coordinates
    d3, k3 = sign_agreement(g, 3)
    assert d3.tolist() == [[1.0, 0.0, -1.0, 0.0]]
    d2, k2 = sign_agreement(g, 2)
    assert d2.tolist() == [[1.0, 1.0, -1.0, 1.0]]


# -- PGD-AT ---------------------------------------------------------------------------

def test_pgd_increases_loss_every_step_and_stays_in_ball_and_box():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()   # CE is convex in x
    x, y = batch(n=16)
    x[:4] = 0.0                                                   # box constraints bind
    torch.manual_seed(1)
    delta, losses = pgd_perturbation(model, x, y, EPS, EPS / 4, steps=10)
    final = F.cross_entropy(model(x + delta), y, reduction="none").detach()
    curve = torch.stack(losses + [final])                          # [K+1, B]
    assert (curve[1:] >= curve[:-1] - 1e-6).all()
    assert (curve[-1] > curve[0] + 1e-3).all()
    assert delta.abs().max().item() <= EPS + 1e-7
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_pgd_at_method_modes_and_cost():
    m = PGDAT(EPS)
    assert (m.cost().forward, m.cost().backward) == (11, 11) and not m.single_step
    assert m.step_size == pytest.approx(EPS / 4)
    assert PGDAT(EPS, **PGDAT.presets["pgd10"]).step_size == pytest.approx(2 / 255)
    net = TinyNet()
    x, y = batch(n=8, shape=(3, 8, 8), classes=10)
    for mode in ("train", "eval"):
        net.train()
        before = net.bn1.num_batches_tracked.item()
        out = PGDAT(EPS, steps=3, attack_mode=mode).step(net, x, y, CTX)
        assert net.training
        # train mode: 3 attack passes + 1 training pass update BN; eval mode: only 1
        assert net.bn1.num_batches_tracked.item() - before == (4 if mode == "train" else 1)
        assert torch.isfinite(out.loss)


# -- Free-AT --------------------------------------------------------------------------

def test_free_at_replays_and_carried_perturbation():
    m_replays = 4
    eps = 8 / 255
    model = mlp(seed=2)
    method = create_method("free", eps, replays=m_replays)
    assert method.replays == m_replays and method.epochs_for(30) == 8    # ceil(30 / 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_steps = 0
    batches = [batch(n=8, seed=s) for s in range(3)] + [batch(n=5, seed=9)]
    expected_next = torch.zeros(8, 3, 4, 4)
    for i, (x, y) in enumerate(batches):                   # train.py's inner loop
        for r in range(method.replays):
            out = method.step(model, x, y, CTX)
            used = method.delta[:x.shape[0]].clone()
            # the delta this replay used is the one predicted after the previous backward
            assert torch.allclose(used, expected_next[:x.shape[0]], atol=0)
            # its gradient, computed independently at the weights before this update
            d = used.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model((x + d).clamp(0, 1)), y), d)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            opt_steps += 1
            expected_next = expected_next.clone()
            expected_next[:x.shape[0]] = (used + eps * g.sign()).clamp(-eps, eps)
    assert opt_steps == m_replays * len(batches)
    assert expected_next.abs().max().item() == pytest.approx(eps)   # it did move, to the edge
    # the state holds the carried perturbation after the pending ascent step
    state = method.state_dict()
    assert torch.equal(state["delta"], expected_next)
    fresh = FreeAT(eps, replays=m_replays)
    fresh.load_state_dict(state)
    assert torch.equal(fresh._buffer_for(batches[0][0]), expected_next)


# -- ELLE / ELLE-A --------------------------------------------------------------------

def test_linearity_error_zero_for_affine_loss_and_closed_form_for_quadratic():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    x_a, x_b, x_c, a = sample_triplet(x, EPS)
    assert ((x_a - x).abs().max() <= EPS) and ((x_b - x).abs().max() <= EPS)
    assert torch.allclose(x_c, (1 - a.view(-1, 1, 1, 1)) * x_a + a.view(-1, 1, 1, 1) * x_b)
    affine = lambda xs: (xs * w).sum((1, 2, 3)) + 0.7
    assert linearity_error(affine, x_a, x_b, x_c, a).item() < 1e-10
    # f = ||x||^2: f(x_c) - ((1-a) f(x_a) + a f(x_b)) = -a (1-a) ||x_a - x_b||^2
    quad = lambda xs: xs.pow(2).sum((1, 2, 3))
    closed = (a * (1 - a) * (x_a - x_b).pow(2).sum((1, 2, 3))).pow(2).mean()
    err = linearity_error(quad, x_a, x_b, x_c, a)
    assert err.item() > 0
    assert err.item() == pytest.approx(closed.item(), rel=1e-10)


def test_elle_step_and_published_lamda():
    assert (elle_lamda(8), elle_lamda(16), elle_lamda(24)) == (1000.0, 5000.0, 10000.0)
    assert ELLE(16 / 255).lamda == 5000.0
    model = curved_net()
    x, y = image_batch()
    torch.manual_seed(4)
    base = ELLE(EPS, lamda=0.0).step(model, x, y, CTX)
    torch.manual_seed(4)
    out = ELLE(EPS, lamda=1000.0).step(model, x, y, CTX)
    err = out.stats["elle_error_sum"].item() / 8
    assert err > 0
    assert (out.loss - base.loss).item() == pytest.approx(1000.0 * err, rel=1e-4)


def reference_elle_a(errors, lam_max=4000.0, k=2.0, decay=0.99):
    """The authors' rule over a list of errors, in numpy: lamdas used at each step."""
    hist, lam, used = [], 0.0, []
    for e in errors:
        used.append(lam)
        if len(hist) > 2 and e > np.mean(hist) + k * np.std(hist):
            lam = lam_max
        else:
            lam *= decay
        hist.append(e)
    return used, lam


def test_elle_a_raises_lamda_on_a_spike_and_matches_the_reference_rule():
    rng = np.random.default_rng(0)
    errors = list(0.01 + 0.002 * rng.random(40))
    errors[10] = 0.05                      # spikes
    errors[25] = 0.08
    method = ELLEA(EPS)
    model = mlp().eval()
    x, y = batch()
    it = iter(errors)
    method.elle_error = lambda *a, **k: torch.tensor(next(it), dtype=torch.float32)
    used = []
    for i in range(len(errors)):
        out = method.step(model, x, y, CTX)
        used.append(out.stats["elle_lambda_sum"].item() / 8)
        if i == 20:                        # resume mid-run: the state carries over
            state = method.state_dict()
            method2 = ELLEA(EPS)
            method2.load_state_dict(state)
            method2.elle_error = method.elle_error
            method = method2
    ref_used, ref_final = reference_elle_a([float(np.float32(e)) for e in errors])
    assert used[11] == pytest.approx(4000.0) and used[12] == pytest.approx(3960.0)
    assert used[26] == pytest.approx(4000.0)
    assert used[10] < 4000.0 and used[25] < 4000.0 * 0.99 ** 13
    assert np.allclose(used, ref_used, rtol=1e-6)
    assert method.state_dict()["lamda"] == pytest.approx(ref_final, rel=1e-6)
    summary = method.summarize({"elle_raises": 1.0, "elle_lambda_sum": 8 * 4000.0,
                                "elle_error_sum": 0.8}, 8)
    assert summary["elle_lambda"] == 4000.0 and summary["elle_raises"] == 1
    with pytest.raises(ValueError, match="lacks"):
        ELLEA(EPS).load_state_dict({"lamda": 1.0})


# -- construction ---------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs,bad", [
    ("gradalign", {"lamda": -1.0}, "-1.0"), ("gradalign", {"noise": "gauss"}, "'gauss'"),
    ("zerograd", {"q": 1.5}, "1.5"), ("multigrad", {"samples": 0}, "0"),
    ("multigrad", {"agree": 1}, "1"), ("pgd", {"steps": 0}, "0"),
    ("pgd", {"attack_mode": "test"}, "'test'"), ("pgd", {"step255": -2.0}, "-2.0"),
    ("free", {"replays": 2.5}, "2.5"), ("elle", {"lamda": float("nan")}, "nan"),
    ("elle-a", {"decay": 1.5}, "1.5"), ("elle-a", {"noise": "N"}, "'N'"),
])
def test_bad_hparams_raise_naming_the_value(name, kwargs, bad):
    with pytest.raises(ValueError) as e:
        create_method(name, EPS, **kwargs)
    assert bad in str(e.value) and list(kwargs)[0] in str(e.value)


@pytest.mark.parametrize("name", list(METHODS))
def test_hparams_round_trip_and_presets_construct(name):
    cls = METHODS[name]
    for preset, hp in cls.presets.items():
        eps = 16 / 255 if "16" in preset else EPS
        m = cls(eps, **hp)
        again = create_method(name, eps, **{k: v for k, v in m.hparams().items() if k != "eps"})
        assert again.hparams() == m.hparams()
        json.dumps(m.hparams())


# -- end to end -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_end_to_end(name, tmp_path):
    from aaer.training import TrainConfig, train
    hp = {"steps": 2} if name == "pgd" else {"replays": 2} if name == "free" else {}
    cfg = TrainConfig(out_dir=str(tmp_path / name), model="small-cnn", method=name,
                      method_hparams=hp, epsilon=8.0, epochs=2, batch_size=16, lr_max=0.05,
                      device="cpu", eval_protocol="quick", n_eval=8, eval_batch_size=16,
                      progress=False, seed=0)
    results = train(cfg, dataset=tiny_dataset(32, 16, classes=4, name="tiny", learnable=True))
    out = tmp_path / name
    for f in ("config.json", "metrics.jsonl", "train.log", "model.pt", "results.json",
              "checkpoint.pt"):
        assert (out / f).is_file(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Free-AT trains epochs / replays passes, as its authors (and the CLI) do
    assert [r["epoch"] for r in rows] == ([0] if name == "free" else [0, 1])
    assert all(math.isfinite(r["train_loss"]) and r["n"] == 32 for r in rows)
    assert math.isfinite(results["final_epoch"]["train_loss"])
    assert 0.0 <= results["evaluation"]["results"]["pgd"]["acc"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["method_resolved"]["name"] == name
    assert config["total_steps"] == len(rows) * 2 * METHODS[name](EPS, **hp).replays
    single = METHODS[name](EPS, **hp).single_step
    assert ("aae_fraction" in rows[-1]) == single
    extra = {"gradalign": "gradalign_cos", "zerograd": "zerograd_zeroed",
             "multigrad": "multigrad_kept", "pgd": "pgd_start_loss", "elle": "elle_error",
             "elle-a": "elle_lambda"}
    if name in extra:
        assert math.isfinite(rows[-1][extra[name]])
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    if name == "elle-a":
        assert set(ckpt["method"]) == {"lamda", "n", "s", "ss"} and ckpt["method"]["n"] == 4
    if name == "free":
        assert ckpt["method"]["delta"].shape == (16, 3, 16, 16)
