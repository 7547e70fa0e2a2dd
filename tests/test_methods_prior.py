"""The prior-guided single-step methods: FGSM-PGI (the official FGSM-MEP), FGSM-MEP-CS,
FGSM-RS-CS (ConvergeSmooth) and FGSM-PCO.

Every mechanism is checked against a hand computation on a linear model f(x) = W x + b,
whose input gradient has a closed form (W^T (softmax(z) - t) / B for the batch-mean smoothed
cross-entropy), computed here in float64 independently of autograd. Each test names the
plausible wrong implementation it rules out, and where the wrong one would be hard to tell
apart, the test first checks that it does give a different answer on its data (its power).
"""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.base import ExampleMemory
from aaer.methods.cs import FGSMMEPCS, FGSMRSCS, gate_open
from aaer.methods.pco import FGSMPCO, pco_regularizer
from aaer.methods.pgi import FGSMPGI
from aaer.methods.prior import STAMP, factor_targets, read_prior, reset_epoch, smoothed_ce

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
C, SHAPE = 4, (3, 2, 2)
D = 12
OURS = ("fgsm-pgi", "fgsm-mep-cs", "fgsm-rs-cs", "fgsm-pco")


class Linear(nn.Module):
    """f(x) = W flatten(x) + b; records every input it is called on."""

    def __init__(self, seed=0, scale=3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(C, D, generator=g) * scale)
        self.b = nn.Parameter(torch.randn(C, generator=g) * 0.1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return x.flatten(1) @ self.W.t() + self.b


def data(n=6, seed=1, low=0.2, high=0.8):
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, *SHAPE, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def memory(method, n):
    spec = method.memory_spec(SHAPE)
    return ExampleMemory({k: torch.full((n, *s.shape), s.fill, dtype=s.dtype)
                          for k, s in spec.items()})


def prefill(mem, prior, momentum=None, epoch=0):
    """Known priors, stamped as written in ``epoch`` (so they are not reset)."""
    mem.slots["prior"].copy_(prior)
    if momentum is not None:
        mem.slots["momentum"].copy_(momentum)
    mem.slots[STAMP].fill_(epoch)


def ctx(epoch, index, mem=None, total=10):
    return StepContext(epoch=epoch, iteration=0, iters_per_epoch=2, total_epochs=total,
                       index=torch.as_tensor(index), memory=mem)


def ls_input_grad(model, x_in, y, factor=0.6, targets=None):
    """d/dx of mean_i sum_c -t_ic log softmax(W x_i + b)_c, in float64 (closed form)."""
    W, b = model.W.detach().double(), model.b.detach().double()
    z = x_in.flatten(1).double() @ W.t() + b
    t = factor_targets(y, C, factor).double() if targets is None else targets
    return ((torch.softmax(z, 1) - t) @ W / x_in.shape[0]).view(x_in.shape)


def sign_step(eta, d, x, step, eps=EPS):
    """clamp(eta + step sign(d), -eps, eps), then clamp to [-x, 1 - x] (the official form)."""
    return torch.max(torch.min((eta + step * d.sign().float()).clamp(-eps, eps), 1 - x), -x)


def weight_grads(loss, model):
    model.zero_grad()
    loss.backward()
    return torch.cat([model.W.grad.flatten(), model.b.grad.flatten()]).clone()


def distinct(wrong, got, err):
    """The wrong gradient is off by far more than the float error of the right one."""
    return (wrong - got).abs().max() > 100 * max(float(err), 1e-7)


# -- factor label smoothing ------------------------------------------------------------

def test_factor_label_smoothing_closed_form():
    """t_y = factor, t_c = (1 - factor)/(C - 1); LS = -sum t log softmax, whose gradient in z
    is (softmax(z) - t)/B (zero at z = log t). Rules out torch's label_smoothing = 1 - factor
    (the FastAT Benchmark's 0.4, which puts 0.64 on the true class at C = 10): the official
    factor 0.6 is torch's label_smoothing 10 * 0.4 / 9."""
    y = torch.tensor([0, 3, 9])
    t = factor_targets(y, 10, 0.6)
    assert t[0, 0] == torch.tensor(0.6) and t[1, 3] == torch.tensor(0.6)
    assert torch.equal(t[0, 1:], torch.full((9,), 0.4 / 9).float())
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert smoothed_ce(torch.zeros(3, 10), t).item() == pytest.approx(torch.log(
        torch.tensor(10.0)).item(), abs=1e-6)
    z = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (gz,) = torch.autograd.grad(smoothed_ce(z, t), z)
    assert torch.allclose(gz, (torch.softmax(z, 1) - t) / 3, atol=1e-7)
    zt = t.log().requires_grad_(True)                  # the minimiser: softmax(z) = t
    (g0,) = torch.autograd.grad(smoothed_ce(zt, t), zt)
    assert g0.abs().max() < 1e-7
    z = z.detach()
    assert smoothed_ce(z, t).item() == pytest.approx(
        F.cross_entropy(z, y, label_smoothing=4 / 9).item(), abs=1e-6)
    assert abs(smoothed_ce(z, t).item() - F.cross_entropy(z, y, label_smoothing=0.4).item()) \
        > 1e-3


# -- FGSM-PGI --------------------------------------------------------------------------

def test_pgi_prior_and_momentum_follow_each_example_across_shuffled_epochs():
    """Epoch 0 starts from +-eps random signs; in epoch 1 (other batch partners, other batch
    positions) example i's attack starts exactly at the prior i stored in epoch 0, and its
    new momentum and prior are m = g/||g||_1 + mu m_i, clamp_box(clamp(eta_i + alpha
    sign(m))) with the L1 norm over the whole batch. Rules out: keying the prior by batch
    position (the BP reading), storing the training perturbation delta (EP) instead of the
    momentum prior, a per-example L1 normalisation."""
    n, mu = 6, 0.3
    x, y = data(n)
    model = Linear(seed=2, scale=6.0)
    method = FGSMPGI(EPS, momentum_decay=mu)
    mem = memory(method, n)
    for idx in ([0, 1, 2], [3, 4, 5]):
        model.inputs.clear()
        method.step(model, x[idx], y[idx], ctx(0, idx, mem))
        start = model.inputs[0] - x[idx]
        assert torch.allclose(start.abs(), torch.full_like(start, EPS), atol=1e-6)
    assert torch.equal(mem.slots[STAMP], torch.zeros(n, dtype=torch.long))
    p0, m0 = mem.slots["prior"].clone(), mem.slots["momentum"].clone()
    # between the epochs the model moves so that example 5 is almost fitted (its smoothed
    # loss gradient is ~1e-3 of its partners'): then its momentum decides its new prior
    # under the batch-wide norm, its own gradient under a per-example norm
    with torch.no_grad():
        t5 = factor_targets(y[[5]], C, 0.6)[0]
        z5 = (x[5] + p0[5]).flatten() @ model.W.t()
        model.b.copy_(t5.log() - z5 + 1e-3 * torch.randn(C, generator=torch.Generator()
                                                           .manual_seed(0)))

    wrong = {"by position": False, "delta stored": False, "per-example L1": False}
    for idx, old in (([5, 0, 3], [0, 1, 2]), ([2, 4, 1], [3, 4, 5])):
        xb, eta, m_prev = x[idx], p0[idx], m0[idx].double()
        g = ls_input_grad(model, xb + eta, y[idx])
        m = g / g.abs().sum() + mu * m_prev
        expected = sign_step(eta, m, xb, EPS)
        model.inputs.clear()
        method.step(model, xb, y[idx], ctx(1, idx, mem))
        assert torch.equal(model.inputs[0], xb + eta)             # started at i's own prior
        assert torch.equal(mem.slots["prior"][idx], expected)
        assert torch.allclose(mem.slots["momentum"][idx].double(), m, rtol=1e-4, atol=1e-7)
        # what the wrong implementations would have stored
        eta_pos, m_pos = p0[old], m0[old].double()
        g_pos = ls_input_grad(model, xb + eta_pos, y[idx])
        wrong["by position"] |= not torch.equal(
            sign_step(eta_pos, g_pos / g_pos.abs().sum() + mu * m_pos, xb, EPS), expected)
        wrong["delta stored"] |= not torch.equal(sign_step(eta, g, xb, EPS), expected)
        per_ex = g / g.flatten(1).abs().sum(1).view(-1, 1, 1, 1) + mu * m_prev
        wrong["per-example L1"] |= not torch.equal(sign_step(eta, per_ex, xb, EPS), expected)
    assert all(wrong.values()), wrong


def test_pgi_momentum_decay_zero_is_fgsm_ep():
    """mu = 0: sign(m) = sign(g), so the stored prior is the training perturbation itself
    (FGSM-EP, the poster's prior from the previous epoch)."""
    x, y = data(3)
    model = Linear(seed=3)
    method = FGSMPGI(EPS, momentum_decay=0.0)
    mem = memory(method, 3)
    prefill(mem, EPS * torch.sign(torch.randn(3, *SHAPE)), torch.randn(3, *SHAPE))
    eta = mem.slots["prior"].clone()
    model.inputs.clear()
    method.step(model, x, y, ctx(1, [0, 1, 2], mem))
    delta = model.inputs[1] - x                               # forward 2 is at x + delta
    assert torch.allclose(mem.slots["prior"], delta, atol=1e-7)
    assert torch.equal(mem.slots["prior"],
                       sign_step(eta, ls_input_grad(model, x + eta, y), x, EPS))


def test_pgi_regulariser_gradient_flows_through_both_forwards():
    """The weight gradient is that of LS(z1, t) + lamda mean_{i,c}(z1 - z0)^2 with z0 = f(x +
    eta) LIVE. Rules out z0.detach() (an AAER-style constant target) and the per-example
    squared norm (sum over classes: C times the official MSE)."""
    x, y = data(4)
    model = Linear(seed=4)
    method = FGSMPGI(EPS, lamda=10.0)
    mem = memory(method, 4)
    eta = EPS * torch.sign(torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(9)))
    prefill(mem, eta, torch.zeros(4, *SHAPE))
    out = method.step(model, x, y, ctx(1, [0, 1, 2, 3], mem))
    got = weight_grads(out.loss, model)
    delta = sign_step(eta, ls_input_grad(model, x + eta, y), x, EPS)
    t = factor_targets(y, C, 0.6)

    def hand(z0_const=False, per_example=False):
        z0, z1 = model(x + eta), model(x + delta)
        z0 = z0.detach() if z0_const else z0
        sq = (z1 - z0).pow(2)
        reg = sq.sum(1).mean() if per_example else sq.mean()
        return weight_grads(smoothed_ce(z1, t) + 10.0 * reg, model)

    err = (hand() - got).abs().max()
    assert err <= 1e-5 * got.abs().max()
    for wrong in (hand(z0_const=True), hand(per_example=True)):
        assert distinct(wrong, got, err)


def test_pgi_resets_every_epochs_reset_epochs_counted_from_zero():
    """At epochs 0, R, 2R (0-based, as ``epoch % R == 0``) every example restarts from
    +-min(alpha, eps) random signs and zero momentum; in between it keeps its prior. Rules
    out a 1-based reset (epochs R-1, 2R-1), an unsigned U(-eps, eps) reset, and never
    resetting."""
    assert [reset_epoch(e, 40) for e in (0, 1, 39, 40, 41, 79, 80, 109)] == \
        [0, 0, 0, 40, 40, 40, 80, 80]
    assert reset_epoch(1000, None) == 0
    x, y = data(3, low=0.3, high=0.7)
    model = Linear(seed=5)
    for alpha in (1.0, 0.5):
        method = FGSMPGI(EPS, alpha=alpha, epochs_reset=40)
        mem = memory(method, 3)
        kept = 0.25 * EPS * torch.ones(3, *SHAPE)
        for written, epoch, reset in ((0, 39, False), (39, 40, True), (40, 41, False),
                                      (79, 80, True), (40, 79, False)):
            prefill(mem, kept, torch.ones(3, *SHAPE), epoch=written)
            eta, m, fresh = read_prior(ctx(epoch, [0, 1, 2], mem), x, EPS, alpha * EPS, 40,
                                       momentum=True)
            assert bool(fresh.all()) == reset and bool(fresh.any()) == reset
            if reset:
                assert torch.equal(eta.abs(), torch.full_like(eta, min(alpha, 1.0) * EPS))
                assert (eta > 0).any() and (eta < 0).any() and torch.equal(m, torch.zeros_like(m))
            else:
                assert torch.equal(eta, kept) and torch.equal(m, torch.ones_like(m))
        eta, _, _ = read_prior(ctx(80, [0, 1, 2], mem), x, EPS, alpha * EPS, 40, init="zero")
        assert torch.equal(eta, torch.zeros_like(eta))     # --delta-init zero
        # through the step: the stamp moves on, so the epoch's second visit keeps the prior
        model.inputs.clear()
        method.step(model, x, y, ctx(40, [0, 1, 2], mem))
        assert torch.equal(mem.slots[STAMP], torch.full((3,), 40))


def test_pgi_forward_one_is_not_clipped_to_the_image_box():
    """A prior stored against another crop can push x + eta outside [0, 1]; forward 1 uses
    it as it is (official code). Rules out clipping x + eta (the FastAT Benchmark's
    choice); the training point x + delta is inside the box."""
    x, y = data(2, low=0.0, high=1.0)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    model = Linear(seed=6)
    method = FGSMPGI(EPS)
    mem = memory(method, 2)
    eta = torch.zeros(2, *SHAPE)
    eta[:, 0], eta[:, 1] = -EPS, EPS
    prefill(mem, eta, torch.zeros(2, *SHAPE))
    model.inputs.clear()
    method.step(model, x, y, ctx(1, [0, 1], mem))
    assert torch.equal(model.inputs[0], x + eta)
    assert model.inputs[0].min() < 0 and model.inputs[0].max() > 1
    assert model.inputs[1].min() >= 0 and model.inputs[1].max() <= 1


def test_pgi_published_recipe_and_l2_refusal():
    values, source = FGSMPGI.published("cifar10", 8.0)
    assert values == {"epochs_reset": 40} and source.startswith("published cifar10 eps 8")
    assert FGSMPGI.published("cifar100", 8.0)[0] == {"epochs_reset": 10}
    assert FGSMPGI.published("tinyimagenet", 8.0)[0] == {"epochs_reset": 10}
    values, source = FGSMPGI.published("svhn", 4.0)
    assert values == {"epochs_reset": 40} and source.startswith("nearest published: cifar10")
    for name in OURS:
        with pytest.raises(UsageError, match="L-inf only"):
            create_method(name, 0.5, norm="l2")


# -- ConvergeSmooth ----------------------------------------------------------------------

def test_cs_gate_epochs_are_strictly_inside_the_milestone_intervals():
    """decay_arr [0, 100, 105, 110], stride 1: the CS term exists in epochs 2..98, 102..103,
    107..108 only. Rules out inclusive comparisons (which would add 1, 99, 101, 104, ...)."""
    open_ = {e for e in range(110) if gate_open(e, 110, [100, 105], 1)}
    assert open_ == set(range(2, 99)) | {102, 103, 107, 108}
    for e in (0, 1, 99, 100, 101, 104, 105, 106, 109):
        assert not gate_open(e, 110, [100, 105], 1)
    assert {e for e in range(30) if gate_open(e, 30, [], 1)} == set(range(2, 29))


def cs_case(method_cls, u, beta=0.0, epoch=2, gamma=0.03, ratio=1.0, seed=7, **kw):
    """One MEP-CS/RS-CS step with the state u, beta set; (loss, weight grads, stats)."""
    x, y = data(4, seed=seed)
    model = Linear(seed=8)
    method = method_cls(EPS, gamma=gamma, ratio=ratio, **kw)
    method.load_state_dict({"u": u, "beta": beta, "sum": 0.0, "n": 0.0, "epoch": epoch})
    mem = memory(method, 4) if method.memory_spec(SHAPE) else None
    if mem is not None:
        prefill(mem, EPS * torch.sign(torch.randn(4, *SHAPE, generator=torch.Generator()
                                                  .manual_seed(3))), torch.zeros(4, *SHAPE))
    torch.manual_seed(11)
    out = method.step(model, x, y, ctx(epoch, [0, 1, 2, 3], mem, total=10))
    return out, weight_grads(out.loss, model), model, x, y


def test_mep_cs_ascends_on_the_clean_loss_when_it_falls_below_last_epochs_mean():
    """With l_n = LS(f(x), t) the clean loss: l_n < u - gamma adds -w2 grad l_n (ascent),
    l_n > u + gamma adds +w2 grad l_n, inside the band nothing. Rules out a penalty on
    increases only (max(l_n - u, 0)), a |.| around the whole loss, a reversed sign."""
    _, base, model, x, y = cs_case(FGSMMEPCS, u=0.0, epoch=2, gamma=1e6)    # never fires
    l_n = smoothed_ce(model(x), factor_targets(y, C, 0.6))
    g_ln = weight_grads(l_n, model)
    value = l_n.item()
    for u, sign in ((value + 0.05, -1.0), (value - 0.05, 1.0), (value + 0.01, 0.0)):
        out, got, _, _, _ = cs_case(FGSMMEPCS, u=u, w2=2.0)
        assert torch.allclose(got, base + sign * 2.0 * g_ln, rtol=1e-5, atol=1e-6), u
        assert out.stats["cs_fired_sum"].item() == (4.0 if sign else 0.0)
        assert out.stats["cs_ascent_sum"].item() == (4.0 if sign < 0 else 0.0)
        assert out.stats["cs_clean_loss_sum"].item() == pytest.approx(4 * value, rel=1e-6)
    # outside the gate epochs nothing fires, however far l_n is from u
    out, got, _, _, _ = cs_case(FGSMMEPCS, u=value + 5.0, epoch=1)
    assert torch.allclose(got, base, rtol=1e-6, atol=1e-7) and out.stats["cs_fired_sum"] == 0


def test_cs_band_uses_the_signed_change_of_the_mean():
    """tau = min(max(gamma/ratio, beta), gamma) with beta = u_{e-1} - u_{e-2} SIGNED:
    gamma 0.03, ratio 2, beta -0.02 (the loss fell) gives tau 0.015, so |l_n - u| = 0.017
    fires; with beta +0.02, tau = 0.02 and it does not. Rules out |beta| (the paper's
    d_{t-1} per the summary), which gives 0.02 in both cases."""
    _, _, model, x, y = cs_case(FGSMMEPCS, u=0.0, gamma=1e6)
    value = smoothed_ce(model(x), factor_targets(y, C, 0.6)).item()
    fired = lambda beta: cs_case(FGSMMEPCS, u=value - 0.017, beta=beta, ratio=2.0)[0] \
        .stats["cs_fired_sum"].item()
    assert fired(-0.02) == 4.0 and fired(0.02) == 0.0
    assert fired(0.01) == 4.0                       # max(gamma/ratio, beta) = 0.015


def test_cs_u_is_last_epochs_batch_size_weighted_mean_of_l_n():
    """u_e = sum_batches l_n B / N (batches of 3 and 2), rounded to float32; beta = u_e -
    u_{e-1}. Rules out the unweighted mean of batch means, the adversarial loss instead of
    l_n, and a running average across epochs."""
    x, y = data(5, seed=12)
    model = Linear(seed=13)
    method = FGSMMEPCS(EPS)
    mem = memory(method, 5)
    t = factor_targets(y, C, 0.6)
    means, batch_means = [], []
    for epoch in range(3):
        sums, batch_means = 0.0, []
        for idx in ([0, 1, 2], [3, 4]):
            method.step(model, x[idx], y[idx], ctx(epoch, idx, mem))
            with torch.no_grad():
                batch_means.append(smoothed_ce(model(x[idx]), t[idx]).item())
            sums += batch_means[-1] * len(idx)
        means.append(torch.tensor(sums / 5).item())
        with torch.no_grad():                        # other weights, another mean next epoch
            model.W[0].add_(0.3 * (epoch + 1))
    method.step(model, x[[0]], y[[0]], ctx(3, [0], mem))     # rolls epoch 2 over
    state = method.state_dict()
    assert state["u"] == means[2]
    assert state["beta"] == torch.tensor(means[2]).sub(torch.tensor(means[1])).item()
    assert state["epoch"] == 3 and state["n"] == 1.0
    unweighted = torch.tensor(sum(batch_means) / 2).item()
    running = torch.tensor((means[0] + means[1] + means[2]) / 3).item()
    assert len({means[2], unweighted, running}) == 3                  # power


def test_rs_cs_attack_is_plain_ce_unprojected_and_l_n_at_the_noisy_start(monkeypatch):
    """x_s = clip(x + U(-eps, eps)); x_adv = clip(x_s + alpha sign(grad plain CE)), NOT
    projected to the eps-ball (here x_adv - x = eps + alpha where the start is +eps and the
    step +alpha); the CS reference forward is at x_s, not at x. Rules out an RS-FGSM
    projection, the smoothed loss in the attack (the benchmark's: on a confidently correct
    example its input gradient points the other way), and l_n at the clean image."""
    import aaer.methods.cs as cs
    monkeypatch.setattr(cs, "uniform_noise", lambda x, r: torch.full_like(x, r))
    x, y = data(3, low=0.3, high=0.7)
    model = Linear(seed=14, scale=20.0)                       # confident predictions
    with torch.no_grad():
        y = (x.flatten(1) @ model.W.t() + model.b).argmax(1)     # ... and correct
    method = FGSMRSCS(EPS, alpha=1.0)
    model.inputs.clear()
    method.step(model, x, y, ctx(2, [0, 1, 2]))
    x_s = (x + EPS).clamp(0, 1)
    assert torch.equal(model.inputs[0], x_s)
    g_plain = ls_input_grad(model, x_s, y, targets=F.one_hot(y, C).double())
    g_smooth = ls_input_grad(model, x_s, y)
    assert (g_plain.sign() != g_smooth.sign()).float().mean() > 0.5      # power
    assert torch.equal(model.inputs[1], (x_s + EPS * g_plain.sign().float()).clamp(0, 1))
    up = g_plain > 0
    assert torch.allclose((model.inputs[1] - x)[up], torch.full_like(x[up], 2 * EPS),
                          atol=1e-6)
    assert torch.equal(model.inputs[2], x_s)                  # l_n at the noisy start


def test_rs_cs_gate_follows_the_loss_at_the_noisy_start():
    """With d = LS(f(x_s)) - LS(f(x)), u = LS(f(x)) + d/4 and gamma = |d|/2, only the
    noisy-start loss is out of the band: the CS term fires (the official RS script's
    reference point). Rules out l_n at the clean image (FGSM-MEP-CS's reference)."""
    from aaer.methods.base import uniform_noise
    x, y = data(4, seed=7)                 # cs_case's batch, model and noise seed
    model = Linear(seed=8)
    torch.manual_seed(11)
    x_s = (x + uniform_noise(x, EPS)).clamp(0, 1)
    t = factor_targets(y, C, 0.6)
    with torch.no_grad():
        l_s, l_x = smoothed_ce(model(x_s), t).item(), smoothed_ce(model(x), t).item()
    d = l_s - l_x
    assert abs(d) > 0.02                                       # power
    out = cs_case(FGSMRSCS, u=l_x + d / 4, gamma=abs(d) / 2)[0]
    assert out.stats["cs_fired_sum"].item() == 4.0
    assert out.stats["cs_clean_loss_sum"].item() == pytest.approx(4 * l_s, rel=1e-6)


# -- FGSM-PCO ----------------------------------------------------------------------------

def pco_setup(seed=15, eps=EPS, scale=3.0):
    x, y = data(4, seed=seed, low=0.0, high=1.0)
    x[:, 0] = 0.99                                  # 1.5 delta from here leaves the box
    model = Linear(seed=16, scale=scale)
    method = FGSMPCO(eps)
    mem = memory(method, 4)
    eta = eps * torch.sign(torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4)))
    prefill(mem, eta)
    return x, y, model, method, mem, eta


def test_pco_mixed_point_weights_the_amplified_fgsm_point_by_the_true_class_probability():
    """x_new = (1 - p)(x + eta) + p (x + 1.5 delta), p = softmax(f(x + eta))_y, unclipped;
    the FGSM point is x + delta; the stored prior becomes delta. Rules out the swapped
    weights (p on the prior), clipping x_new to [0, 1], amplification 2."""
    x, y, model, method, mem, eta = pco_setup()
    with torch.no_grad():
        p = torch.softmax(model(x + eta).double(), 1).gather(1, y.view(-1, 1)).view(-1, 1, 1, 1)
    delta = sign_step(eta, ls_input_grad(model, x + eta, y), x, EPS)
    expected = ((1 - p) * (x + eta) + p * (x + 1.5 * delta)).float()
    model.inputs.clear()
    method.step(model, x, y, ctx(3, [0, 1, 2, 3], mem))
    x_new = model.inputs[1]
    assert torch.allclose(x_new, expected, atol=1e-6)
    assert x_new.max() > 1.0                                  # not clipped
    for wrong in ((p * (x + eta) + (1 - p) * (x + 1.5 * delta)),
                  ((1 - p) * (x + eta) + p * (x + 2.0 * delta)), expected.clamp(0, 1)):
        assert not torch.allclose(x_new, wrong.float(), atol=1e-5)
    assert torch.equal(model.inputs[2], x + delta)
    assert torch.equal(mem.slots["prior"], delta)


def test_pco_gradient_flows_through_the_confidence_and_all_three_logits():
    """The weight gradient is that of LS(z_new, t) + 10 |MSE(z_f, z0) - MSE(z_f, z_new)| with
    c = clamp(1 - p, 0, 1) and z0, z_new, z_f all live. Rules out c.detach() (confidence as
    a constant), detaching z0 or z_f, dropping the absolute value (closed form |1 - 4|),
    and a per-example sum over classes instead of the mean over batch and classes."""
    eps = 32 / 255                 # a large eta - 1.5 delta: a large path through c
    x, y, model, method, mem, eta = pco_setup(eps=eps, scale=0.7)
    out = method.step(model, x, y, ctx(3, [0, 1, 2, 3], mem))
    got = weight_grads(out.loss, model)
    delta = mem.slots["prior"].clone()
    t = factor_targets(y, C, 0.6)

    def hand(c_const=False, z0_const=False, zf_const=False, per_example=False):
        z0 = model(x + eta)
        p = torch.softmax(z0, 1).gather(1, y.view(-1, 1)).view(-1, 1, 1, 1)
        c = (1 - p).clamp(0, 1)
        c = c.detach() if c_const else c
        z_new = model(c * (x + eta) + (1 - c) * (x + 1.5 * delta))
        z_f = model(x + delta)
        z0 = z0.detach() if z0_const else z0
        z_f = z_f.detach() if zf_const else z_f
        mse = (lambda a, b: (a - b).pow(2).sum(1).mean()) if per_example else \
            (lambda a, b: (a - b).pow(2).mean())
        reg = (mse(z_f, z0) - mse(z_f, z_new)).abs()
        return weight_grads(smoothed_ce(z_new, t) + 10.0 * reg, model)

    err = (hand() - got).abs().max()
    assert err <= 1e-5 * got.abs().max()
    for kw in ({"c_const": True}, {"z0_const": True}, {"zf_const": True},
               {"per_example": True}):
        assert distinct(hand(**kw), got, err), kw
    # the absolute value: here MSE(z_f, z0) - MSE(z_f, z_new) = 1 - 4
    zf, z0, zn = torch.zeros(2, 3), torch.ones(2, 3), 2 * torch.ones(2, 3)
    assert pco_regularizer(zf, z0, zn).item() == 3.0


def test_pco_prior_is_never_reset_and_follows_the_example():
    """The prior is initialised once (+-eps signs, at the first visit) and afterwards
    always the example's last delta, at epochs 40 and 80 too (no reset, unlike FGSM-PGI),
    keyed by index under a shuffled order. Rules out a PGI-style periodic reset and
    keying by batch position."""
    x, y = data(4, seed=17)
    model = Linear(seed=18)
    method = FGSMPCO(EPS)
    mem = memory(method, 4)
    model.inputs.clear()
    method.step(model, x[[0, 1]], y[[0, 1]], ctx(0, [0, 1], mem))
    assert torch.allclose((model.inputs[0] - x[[0, 1]]).abs(), torch.full((2, *SHAPE), EPS),
                          atol=1e-6)
    method.step(model, x[[2, 3]], y[[2, 3]], ctx(0, [2, 3], mem))
    for epoch, idx in ((40, [3, 0]), (80, [1, 3])):
        before = mem.slots["prior"].clone()
        model.inputs.clear()
        method.step(model, x[idx], y[idx], ctx(epoch, idx, mem))
        assert torch.equal(model.inputs[0], x[idx] + before[idx])


# -- generic: construction, resume with the CS term firing ------------------------------

@pytest.mark.parametrize("name", OURS)
def test_hparams_round_trip(name):
    kw = {"milestones": [100, 105]} if "cs" in name else {}
    m = create_method(name, EPS, **kw)
    again = create_method(name, EPS, **{k: v for k, v in m.hparams().items() if k != "eps"})
    assert again.hparams() == m.hparams()
    json.dumps(m.hparams())
    assert name in METHODS and m.cost().forward >= 2


@pytest.mark.parametrize("name,kwargs,bad", [
    ("fgsm-pgi", {"epochs_reset": 0}, "0"), ("fgsm-pgi", {"factor": 1.5}, "1.5"),
    ("fgsm-pgi", {"lamda": float("nan")}, "nan"), ("fgsm-pco", {"beta": -1.0}, "-1.0"),
    ("fgsm-mep-cs", {"milestones": [105, 100]}, "[105, 100]"),
    ("fgsm-mep-cs", {"initialize": "yes"}, "'yes'"), ("fgsm-rs-cs", {"ratio": 0.5}, "0.5"),
    ("fgsm-pco", {"delta_init": "previous"}, "'previous'"),
])
def test_bad_hparams_raise_naming_the_value(name, kwargs, bad):
    with pytest.raises(ValueError) as e:
        create_method(name, EPS, **kwargs)
    assert bad in str(e.value) and list(kwargs)[0] in str(e.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,hp", [
    ("fgsm-pgi", {"epochs_reset": 2}),                        # the cut lands in a reset epoch
    ("fgsm-mep-cs", {"stride": 0.0, "gamma": 1e-4, "epochs_reset": 2}),   # CS fires
    ("fgsm-rs-cs", {"stride": 0.0, "gamma": 1e-4}),
])
def test_resume_inside_a_reset_epoch_and_with_cs_firing_is_bitwise(name, hp, tmp_path):
    """A run stopped by SIGTERM in epoch 2 (of 3) and resumed ends bit for bit as the
    uninterrupted run, where epoch 2 resets the priors (epochs_reset 2: examples not yet seen
    in it must still be reset after the resume) and the CS term fires from epoch 1 on (its
    u, beta and the epoch's running sums come back from the checkpoint)."""
    from aaer.runs import read_checkpoint
    from aaer.training import TrainConfig, train
    from tests.helpers.tiny import same_state as _same, stopped_and_resumed, tiny_dataset
    ds = tiny_dataset(n_train=32, n_test=8, size=8, classes=4, learnable=True)
    cfg = lambda out: TrainConfig(out_dir=str(out), model="small-cnn", method=name,
                                  method_hparams=hp, epsilon=8.0, epochs=3, batch_size=8,
                                  lr_max=0.05, device="cpu", eval_protocol=None,
                                  progress=False, seed=1)
    train(cfg(tmp_path / "ref"), ds)
    b = stopped_and_resumed(cfg(tmp_path / "cut"), ds, epoch=2)
    a = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))
    for part in ("model", "method", "memory"):
        assert _same(a.get(part), b.get(part)), part
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text()
            .splitlines()]
    if "cs" in name:
        assert rows[0]["cs_fired"] == 0 and rows[2]["cs_fired"] > 0
    else:
        assert a["memory"][STAMP].eq(2).all()                  # every example seen in epoch 2


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("name,sets", [
    ("fgsm-pgi", []),
    ("fgsm-mep-cs", ["--set", "stride=0", "--set", "gamma=0.0001"]),    # CS fires in epoch 1
])
def test_two_gloo_processes_match_one_process(name, sets, tmp_path):
    """DDP: 2 processes on batches of 8 train like 1 process on batches of 16. This checks
    the global per-example memory (each process writes the rows of its share, gathered into
    every copy), the batch-wide L1 norm of the momentum taken over the global batch, and
    the CS gate decided on the global batch's l_n with u the global epoch mean. The prior
    starts at zero (--delta-init zero) so that no per-process noise enters; the test model
    has no BatchNorm (see tests/helpers/ddp.py)."""
    import numpy as np
    import sys
    from tests.helpers.ddp import MODEL, SCRIPT, metrics as _metrics, run as _run
    from tests.helpers.files import write_cifar10
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=16, n_test=4)   # 80 images
    flags = ["--dataset", "cifar10", "--data-dir", str(data), "--model", MODEL,
             "--method", name, "--delta-init", "zero", *sets, "--epochs", "2",
             "--batch-size", "16", "--lr-max", "0.05", "--eval-protocol", "none",
             "--no-progress", "--device", "cpu"]
    script = SCRIPT
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, script, "worker", *flags, "--out-dir", str(one)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
          "2", script, "worker", *flags, "--out-dir", str(two)], tmp_path)
    assert json.loads((two / "config.json").read_text())["performance"]["world_size"] == 2
    m1, m2 = _metrics(one), _metrics(two)
    for a, b in zip(m1, m2):
        assert a["n"] == b["n"] == 80 and a["aae_count"] == b["aae_count"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
        if "cs_fired" in a:
            assert b["cs_fired"] == a["cs_fired"]
            assert b["cs_clean_loss"] == pytest.approx(a["cs_clean_loss"], rel=1e-4)
    if "cs_fired" in m1[0]:
        assert m1[0]["cs_fired"] == 0 and m1[1]["cs_fired"] > 0
    c1 = torch.load(one / "checkpoint.pt", weights_only=True)
    c2 = torch.load(two / "checkpoint.pt", weights_only=True)
    for k in c1["model"]:
        assert torch.allclose(c1["model"][k], c2["model"][k], rtol=1e-4, atol=1e-6), k
    p1, p2 = c1["memory"]["prior"], c2["memory"]["prior"]
    assert torch.equal(c1["memory"][STAMP], c2["memory"][STAMP])
    assert c1["memory"][STAMP].eq(1).all() and p1.abs().max() > 0
    assert (p1 != p2).float().mean() < 1e-3          # a sign flip of a near-zero entry at most
    assert torch.allclose(c1["memory"]["momentum"], c2["memory"]["momentum"], rtol=1e-3,
                          atol=1e-7)
    if "cs" in name:
        assert c2["method"]["u"] == pytest.approx(c1["method"]["u"], rel=1e-5)
