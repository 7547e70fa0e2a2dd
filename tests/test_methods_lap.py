"""LAP's defining properties (v-lap, r-lap, n-lap), each checked against a closed form or
a hand computation, and its recipe as aaer.config resolves it. The step-by-step parity
with the official code is tests/test_lap_parity.py."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.base import Weights, clip_to_box, project
from aaer.methods.lap import BETAS, layer_coefficients, perturbed_weights
from aaer.models import build
from tests.helpers.tiny import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
LAM = 5e-4


def _setup(lr=0.1, mu=0.8, state=True, seed=0):
    """TinyNet in float64 (3 perturbed tensors: conv1, conv2, fc), SGD with weight decay,
    and, with ``state``, momentum buffers already there (a run past its first step)."""
    torch.manual_seed(seed)
    net = TinyNet(width=4).double()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mu, weight_decay=LAM)
    if state:
        for p in net.parameters():
            opt.state[p]["momentum_buffer"] = 0.1 * torch.randn_like(p)
    x = torch.rand(12, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (12,))
    return net, opt, x, y


def _train_step(method, net, opt, x, y):
    """One iteration as the training loop runs it; returns the weights the second forward
    saw (w~)."""
    seen = []
    hook = net.register_forward_pre_hook(
        lambda m, a: seen.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    weights = Weights(net, opt)
    out = method.step(net, x, y, StepContext(weights=weights))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    weights.restore()
    opt.step()
    hook.remove()
    assert len(seen) == 2
    return seen[1], out


def _grads(net, params, x_in, y):
    """Weight gradients of mean CE at ``params`` (a train-mode copy), and the input grad."""
    m = copy.deepcopy(net)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
    x_in = x_in.clone().requires_grad_(True)
    loss = F.cross_entropy(m(x_in), y)
    names = [n for n, _ in m.named_parameters()]
    gs = torch.autograd.grad(loss, [p for _, p in m.named_parameters()] + [x_in])
    return dict(zip(names, gs[:-1])), gs[-1]


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


@pytest.mark.parametrize("mode", ["reference", "shared-momentum", "restore"])
def test_one_step_is_the_closed_form_of_each_mode(mode):
    """V-LAP from momentum buffers b, lr 0.1, mu 0.8, weight decay lam; g1 is the gradient
    at (x, w), b' = mu b + g1 + lam w the first step's momentum. Then, per perturbed
    tensor k of K = 3 (L = K, gamma 0.3, beta 0.05):
        w~_k = w_k - c_k beta ||w_k|| b'_k / ||b'_k||     (a DESCENT step, c_K = 0)
    with g2 the gradient at (x + delta, w~):
        reference        b'' = mu b + g2 + lam w~,   w_new = w~ - lr b''
        shared-momentum  b'' = mu b' + g2 + lam w~,  w_new = w~ - lr b''
        restore          b'' = mu b + g2 + lam w,    w_new = w - lr b''
    Rules out: an AWP-style ascent direction (sign of w~ - w flipped); a direction from the
    gradient alone (no momentum, no weight decay); scaling by the stepped weight's norm;
    removing the perturbation before the optimiser step in reference mode (or keeping it
    in restore mode); the momentum of the wrong torch (deep vs shared copy)."""
    net, opt, x, y = _setup()
    beta, lr, mu = 0.05, 0.1, 0.8
    w = {n: p.detach().clone() for n, p in net.named_parameters()}
    b = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.named_parameters()}
    method = create_method("v-lap", EPS, beta=beta, lap_mode=mode)
    w_seen, _ = _train_step(method, net, opt, x, y)

    g1, gx = _grads(net, w, x, y)
    b1 = {n: mu * b[n] + g1[n] + LAM * w[n] for n in w}
    targets = [n for n, _ in perturbed_weights(net.named_parameters())]
    assert targets == ["conv1.weight", "conv2.weight", "fc.weight"]
    c = [1.0, 1 - (math.log(2) / math.log(3)) ** 0.3, 0.0]
    w_tilde = dict(w)
    for n, c_k in zip(targets, c):
        w_tilde[n] = w[n] - c_k * beta * w[n].norm() * b1[n] / b1[n].norm()
    for n in w:
        assert _rel(w_seen[n], w_tilde[n]) < 1e-10, n
    for n, c_k in zip(targets, c):     # the size of the move: c_k beta ||w_k||
        assert float((w_seen[n] - w[n]).norm()) == pytest.approx(
            c_k * beta * float(w[n].norm()), rel=1e-10, abs=1e-15)
    assert torch.equal(w_seen["fc.weight"], w["fc.weight"])      # c_K = 0: not moved at all

    delta = clip_to_box(x, project(EPS * gx.sign(), EPS, "linf"))
    g2, _ = _grads(net, w_tilde, (x + delta).clamp(0, 1), y)
    for n, p in net.named_parameters():
        base = b1[n] if mode == "shared-momentum" else b[n]
        start = w[n] if mode == "restore" else w_tilde[n]
        b2 = mu * base + g2[n] + LAM * start
        assert _rel(opt.state[p]["momentum_buffer"], b2) < 1e-10, (n, "momentum")
        assert _rel(p.detach(), start - lr * b2) < 1e-10, (n, "weights")


@pytest.mark.parametrize("mode", ["reference", "shared-momentum", "restore"])
def test_with_lr_zero_and_no_state_nothing_is_perturbed_and_no_first_step_remains(mode):
    """CyclicLR's first iteration: lr 0 and an empty optimiser state. The first step moves
    nothing, so v = 0 and the second forward sees w exactly; the state after the step is
    g2 + lam w alone in every mode: the buffer the first step created is dropped by the
    restore even when the optimiser shares its tensors (torch >= 2.1). Rules out keeping
    the first step's buffer when there was none (mu (g1 + lam w) + g2 + lam w), and a
    perturbation that does not vanish with the step (e.g. a gradient-based direction)."""
    net, opt, x, y = _setup(lr=0.0, mu=0.9, state=False)
    w = {n: p.detach().clone() for n, p in net.named_parameters()}
    w_seen, _ = _train_step(create_method("v-lap", EPS, beta=0.5, lap_mode=mode), net, opt, x, y)
    assert all(torch.equal(w_seen[n], w[n]) for n in w)
    _, gx = _grads(net, w, x, y)
    g2, _ = _grads(net, w, (x + clip_to_box(x, EPS * gx.sign())).clamp(0, 1), y)
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), w[n])
        assert _rel(opt.state[p]["momentum_buffer"], g2[n] + LAM * w[n]) < 1e-12, n


def test_both_forwards_update_batchnorm_and_the_first_update_is_kept():
    """bn1 sees conv1(x + eta; w) in the first forward and conv1(x + delta; w~) in the
    second: its running mean is two momentum-0.1 updates, computed here by hand with
    F.conv2d, and num_batches_tracked grows by 2. Rules out a first forward in eval mode,
    and putting back the BN buffers of before the first forward (restoring a snapshot
    taken too early) -- both leave one update."""
    net, opt, x, y = _setup()
    rm0 = net.bn1.running_mean.clone()
    w = {n: p.detach().clone() for n, p in net.named_parameters()}
    w_seen, _ = _train_step(create_method("v-lap", EPS, beta=0.05), net, opt, x, y)
    _, gx = _grads(net, w, x, y)
    x1 = (x + clip_to_box(x, project(EPS * gx.sign(), EPS, "linf"))).clamp(0, 1)
    m1 = F.conv2d(x, w["conv1.weight"], padding=1).mean((0, 2, 3))
    m2 = F.conv2d(x1, w_seen["conv1.weight"], padding=1).mean((0, 2, 3))
    expect = 0.9 * (0.9 * rm0 + 0.1 * m1) + 0.1 * m2
    assert _rel(net.bn1.running_mean, expect) < 1e-12
    assert int(net.bn1.num_batches_tracked) == 2


def test_the_layer_coefficients():
    """c_k = 1 - (ln k / ln L)^gamma: exact values for gamma 1 (1 - log_L k) and 0.5, and
    the README's gamma 0.3 with the official L = 21 (c_2 and c_20 by hand); c_1 = 1 and
    c_L = 0 exactly, strictly decreasing. Rules out counting k from 0 (a log 0), a profile
    that grows with depth, and a gamma applied outside the power."""
    assert layer_coefficients(4, 4, 1.0) == pytest.approx([1.0, 0.5, 1 - math.log(3) / math.log(4),
                                                           0.0], abs=1e-15)
    assert layer_coefficients(2, 4, 0.5) == pytest.approx([1.0, 1 - math.sqrt(0.5)], abs=1e-15)
    c = layer_coefficients(21, 21, 0.3)
    assert c[0] == 1.0 and c[-1] == 0.0
    assert c[1] == pytest.approx(0.358507, abs=1e-6) and c[19] == pytest.approx(0.004835, abs=1e-6)
    assert all(a > b for a, b in zip(c, c[1:]))


@pytest.mark.parametrize("model,count", [("preactresnet18", 21), ("wrn-34-10", 35),
                                         ("small-cnn", 5)])
def test_the_perturbed_tensors_are_the_official_layer_number(model, count):
    """The official layer_number is 21 for PreActResNet-18 and 35 for WRN-34-10 (utils.py's
    comment; the script's default 21): conv kernels and linear weights only. Rules out
    counting BatchNorm weights (PreActResNet-18 would give 41) or biases, and a
    normalisation wrapper's name or buffers entering the count."""
    net = build(model, 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    names = [n for n, _ in perturbed_weights(net.net.named_parameters())]
    assert len(names) == count
    assert names[0] == "conv1.weight" and names[-1] in ("linear.weight", "fc.weight")
    if model == "preactresnet18":      # the shortcut comes after conv2, as registered
        assert names[5:8] == ["layer2.0.conv1.weight", "layer2.0.conv2.weight",
                              "layer2.0.shortcut.0.weight"]


def test_the_perturbation_accumulates_in_reference_mode_only():
    """lr 1e-3, beta 0.2: the optimiser's own move of conv1 is about 1e-3 of its norm,
    the perturbation 0.2 of it (its size does not scale with lr). After the step the
    weights have moved by ~0.2 in reference mode (the perturbation stays) and by ~1e-3 in
    restore mode (it is put back before the optimiser step). Rules out a reference mode
    that removes the perturbation, and a restore mode that keeps it."""
    for mode, moved in (("reference", True), ("restore", False)):
        net, opt, x, y = _setup(lr=1e-3)
        w0 = net.conv1.weight.detach().clone()
        _train_step(create_method("v-lap", EPS, beta=0.2, lap_mode=mode), net, opt, x, y)
        change = float((net.conv1.weight.detach() - w0).norm() / w0.norm())
        # the first tensor's move is beta (0.2) of its norm; the SGD step alone is ~1e-3
        assert (change > 0.19) == moved and (change < 0.01) == (not moved), (mode, change)


def test_settings_it_refuses():
    with pytest.raises(UsageError, match="no L2 version"):
        create_method("r-lap", 0.5, norm="l2")
    with pytest.raises(ValueError, match="layer_number"):
        create_method("r-lap", EPS, layer_number=1)
    with pytest.raises(UsageError, match="lap_mode 'paper'"):
        create_method("n-lap", EPS, lap_mode="paper")
    with pytest.raises(ValueError, match="beta"):
        create_method("n-lap", EPS, beta=float("nan"))
    net, opt, x, y = _setup()
    with pytest.raises(UsageError, match="layer_number 2: the model has 3"):
        _train_step(create_method("v-lap", EPS, layer_number=2), net, opt, x, y)
    with pytest.raises(UsageError, match="fp16"):
        with torch.autocast("cpu", dtype=torch.float16):
            create_method("v-lap", EPS).step(net.float(), x.float(), y,
                                             StepContext(weights=Weights(net, opt)))


# -- the recipe ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v-lap", "r-lap", "n-lap"])
def test_published_betas_are_the_readme_commands(name):
    """The README's twelve CIFAR-10 commands (beta per variant and eps, gamma 0.30)."""
    readme = {"v-lap": (0.03, 0.058, 0.07, 0.48), "r-lap": (0.002, 0.03, 0.05, 0.3),
              "n-lap": (0.001, 0.002, 0.005, 0.75)}[name]
    cls = METHODS[name]
    for eps, beta in zip((8, 12, 16, 32), readme):
        assert cls.published("cifar10", eps) == ({"beta": beta, "gamma": 0.3},
                                                 f"published cifar10 eps {eps}")
    # nowhere else: the CIFAR-10 entry at the nearest eps on a log scale (10 -> 12)
    assert cls.published("cifar100", 10) == (
        {"beta": BETAS[name][12], "gamma": 0.3},
        "nearest published: cifar10 eps 12 (none for cifar100 eps 10)")
    assert cls.published("cifar10", 8, "l2") is None
    assert cls(EPS).beta == readme[0] and cls(EPS).gamma == 0.3  # defaults: eps 8


def test_resolve_gives_the_published_recipe():
    from aaer.training import TrainConfig
    r = TrainConfig(method="r-lap", epsilon=16, dataset="cifar10").resolve()
    assert (r.method.options["beta"], r.method.options["gamma"]) == (0.05, 0.3)
    assert r.sources["method.options.beta"] == "published cifar10 eps 16"
    assert r.sources["method.options.gamma"] == "published cifar10 eps 16"
    assert (r.method.alpha, r.method.clamp, r.method.delta_init) == (1.25, 1, "random")
    assert (r.optim.epochs, r.optim.lr_max, r.optim.momentum, r.optim.weight_decay) == \
        (30, 0.2, 0.9, 5e-4)
    assert r.method.options["lap_mode"] == "reference"
    r = TrainConfig(method="v-lap", epsilon=8, dataset="cifar100").resolve()
    assert r.method.options["beta"] == 0.03
    assert r.sources["method.options.beta"] == \
        "nearest published: cifar10 eps 8 (none for cifar100 eps 8)"
    # an explicit beta wins; gamma then takes the method's default, the README's 0.3
    r = TrainConfig(method="n-lap", epsilon=16, method_hparams={"beta": 0.01,
                                                                 "lap_mode": "restore"}).resolve()
    assert (r.method.options["beta"], r.method.options["gamma"]) == (0.01, 0.3)
    assert r.sources["method.options.beta"] == "explicit"
    assert r.method.options["lap_mode"] == "restore"
    with pytest.raises(UsageError, match="no L2 version"):
        TrainConfig(method="r-lap", norm="l2", epsilon=0.5).resolve()


def test_a_rollback_doubles_beta():
    m = create_method("r-lap", EPS, beta=0.05)
    assert m.strengthen("auto", {"regularizer": 2.0, "step": 0.75}) == \
        {"change": "regularizer", "param": "beta", "old": 0.05, "new": 0.1}
    assert m.strengthen("step", {"regularizer": 2.0, "step": 0.75})["param"] == "alpha"
