"""FGSM-UAP, FGSM-CUAP, FGSM-FUAP (Pan, Li, Yao, AAAI 2024): the defining properties of the
universal-perturbation bank, its update, the start, the consistency term and the
feature selector, against exact oracles (docs/methods/fgsm-uap.md, "Defining property and
tests"); and the penultimate-features helper on aaer's registered models."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.base import classifier, penultimate
from aaer.methods.uap import adam_step
from aaer.models import build
from tests.helpers.tiny import TinyNet
from tests.helpers.linear import D, SHAPE, Linear, Recorder, batch

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
E_U = 1.25 * EPS                          # 10/255, the published e_u
def signs(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)


def input_grad(net, x0, y, ls=0.4):
    """The oracle's attack gradient: d mean CE_ls(f(x0), y) / d x0, taken on its own."""
    x0 = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(x0), y, label_smoothing=ls), x0)
    return g


def normalised_mean(g, rows=None):
    """mean over ``rows`` of g_i / ||g||_1 with ONE L1 norm over the whole batch."""
    gh = g / g.abs().sum()
    return gh.mean(0) if rows is None else gh[rows].mean(0)


# -- FGSM-UAP ------------------------------------------------------------------------------

def test_the_bank_moves_by_e_u_steps_of_the_momentum_sign_and_stays_on_the_lattice():
    """Wrong implementations ruled out: overwriting U with e_u sign(M) (no zeros appear),
    clipping the bank to eps instead of e_u (entries at 8/255), a step of e_u times the raw
    gradient (entries off {-e_u, 0, e_u})."""
    torch.manual_seed(0)
    net = Recorder(Linear())
    s0 = signs((1, *SHAPE))
    m = create_method("fgsm-uap", EPS)
    m.load_state_dict({"uap": E_U * s0, "momentum": torch.zeros(1, *SHAPE)})
    x, y = batch()
    m.step(net, x, y, StepContext())
    mean = normalised_mean(input_grad(net.net, net.inputs[0], y))
    assert torch.allclose(m.momentum[0], mean, rtol=1e-5, atol=1e-9)
    expected = (E_U * s0[0] + E_U * mean.sign()).clamp(-E_U, E_U)
    clear = mean.abs() > 1e-4 * mean.abs().max()          # signs the two sums agree on
    assert clear.float().mean() > 0.9
    assert torch.equal(m.uap[0][clear], expected[clear])
    e_u = torch.tensor(E_U).item()                         # e_u in float32
    assert set(m.uap.unique().tolist()) == {-e_u, 0.0, e_u}


def test_the_start_is_the_bank_projected_to_the_eps_ball():
    """e_u = 10/255 > eps: x0 - x is exactly +-eps with U's signs. Ruled out: the bank
    added unprojected (x0 - x = +-10/255)."""
    net = Recorder(Linear())
    s0 = signs((1, *SHAPE))
    m = create_method("fgsm-uap", EPS)
    m.load_state_dict({"uap": E_U * s0, "momentum": torch.zeros(1, *SHAPE)})
    x, y = batch()
    m.step(net, x, y, StepContext())
    assert torch.equal(net.inputs[0], (x + EPS * s0).clamp(0, 1))
    assert m.uap_eps == pytest.approx(10 / 255) and m.hparams()["uap_scale"] == 1.25


def test_the_momentum_accumulates_batch_l1_normalised_gradients_with_decay_0_3():
    """M after two steps = mean gh2 + 0.3 mean gh1, each gh normalised by its own batch's
    L1 norm. Ruled out: a per-example L1 norm, sign() inside the momentum (the LIET paper's
    restatement), no decay."""
    torch.manual_seed(0)
    net = Recorder(Linear())
    m = create_method("fgsm-uap", EPS)
    m.load_state_dict({"uap": E_U * signs((1, *SHAPE)), "momentum": torch.zeros(1, *SHAPE)})
    x, y = batch()
    m.step(net, x, y, StepContext())
    x2, y2 = batch(seed=5)
    m.step(net, x2, y2, StepContext())
    g1 = input_grad(net.net, net.inputs[0], y)
    g2 = input_grad(net.net, net.inputs[2], y2)     # inputs: x0, x1, x0', x1'
    expected = normalised_mean(g2) + 0.3 * normalised_mean(g1)
    assert torch.allclose(m.momentum[0], expected, rtol=1e-5, atol=1e-10)
    per_example = lambda g: (g / g.flatten(1).abs().sum(1).view(-1, 1, 1, 1)).mean(0)
    wrong = [per_example(g2) + 0.3 * per_example(g1),
             g2.sign().mean(0) + 0.3 * g1.sign().mean(0), normalised_mean(g2)]
    for w in wrong:
        assert not torch.allclose(m.momentum[0], w, rtol=1e-2, atol=1e-6)


def test_the_consistency_term_differentiates_through_the_start_logits_too():
    """For z = W vec(x), the weight gradient of lamda mean((z1 - z0)^2) is
    (2 lamda / (B K)) sum_i W(x1_i - x0_i)(x1_i - x0_i)^T. Ruled out: z0 detached (gives
    (x1_i)^T in place of (x1_i - x0_i)^T), a sum instead of the mean over B x K."""
    torch.manual_seed(0)
    net = Recorder(Linear())
    lamda, ls = 10.0, 0.4
    m = create_method("fgsm-uap", EPS, lamda=lamda, label_smoothing=ls)
    x, y = batch()
    out = m.step(net, x, y, StepContext())
    out.loss.backward()
    W = net.net.fc.weight.detach()
    x0, x1 = net.inputs[0].flatten(1), net.inputs[1].flatten(1)
    B, K = x.shape[0], W.shape[0]
    Wv = W.clone().requires_grad_(True)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(x1 @ Wv.t(), y, label_smoothing=ls), Wv)
    d = x1 - x0
    mse_grad = 2 * lamda / (B * K) * (W @ d.t()) @ d
    assert torch.allclose(net.net.fc.weight.grad, ce_grad + mse_grad, rtol=1e-4, atol=1e-7)
    detached = 2 * lamda / (B * K) * (W @ d.t()) @ x1
    assert not torch.allclose(net.net.fc.weight.grad, ce_grad + detached, rtol=1e-2)


def test_the_loss_is_label_smoothed_cross_entropy_plus_lamda_mse():
    """CE_ls puts 1 - ls + ls/K on the true class (PyTorch's label_smoothing); the loss is
    CE_ls(z1) + lamda mean((z1 - z0)^2). Ruled out: plain CE, LIET's non-uniform smoothing,
    a mean over examples only in the MSE."""
    torch.manual_seed(0)
    net = Recorder(Linear(bias=True))
    m = create_method("fgsm-uap", EPS, lamda=3.0, label_smoothing=0.4)
    x, y = batch()
    loss = m.step(net, x, y, StepContext()).loss
    with torch.no_grad():
        z0, z1 = net.net(net.inputs[0]), net.net(net.inputs[1])
        t = torch.full((6, 3), 0.4 / 3)
        t[torch.arange(6), y] = 1 - 0.4 + 0.4 / 3
        ce = -(t * F.log_softmax(z1, 1)).sum(1).mean()
        expected = ce + 3.0 * ((z1 - z0) ** 2).sum() / (6 * 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(z1, y).item() +
                                        3.0 * ((z1 - z0) ** 2).sum().item() / 18, rel=1e-3)


def test_a_zero_gradient_decays_the_momentum_and_leaves_the_bank():
    """The official code divides 0 by 0 here and fills the bank with NaN for good."""
    net = Linear()
    nn.init.zeros_(net.fc.weight)                          # constant logits: g = 0
    m = create_method("fgsm-uap", EPS)
    u, mom = E_U * signs((1, *SHAPE)), 1e-3 * signs((1, *SHAPE), seed=2)
    m.load_state_dict({"uap": u, "momentum": mom})
    x, y = batch()
    m.step(net, x, y, StepContext())
    assert torch.equal(m.momentum, 0.3 * mom) and torch.isfinite(m.uap).all()
    assert torch.equal(m.uap, (u + E_U * mom.sign()).clamp(-E_U, E_U))


# -- FGSM-CUAP -----------------------------------------------------------------------------

def test_only_the_classes_in_the_batch_move_each_by_its_own_examples():
    """Labels {0, 0, 2} of K = 3: U[1] and M[1] stay (no decay of an absent class);
    M[0] = mean of the two class-0 gh + 0.3 M[0], M[2] = the class-2 gh + 0.3 M[2], gh with
    ONE L1 norm over the batch. Ruled out: every class moved with the batch mean, absent
    classes' momentum decayed, a per-class L1 norm."""
    torch.manual_seed(0)
    net = Recorder(Linear())
    m = create_method("fgsm-cuap", EPS)
    u, mom = E_U * signs((3, *SHAPE)), 1e-3 * signs((3, *SHAPE), seed=2)
    m.load_state_dict({"uap": u, "momentum": mom})
    x, _ = batch(n=3)
    x[2] = 0.5 + 0.4 * (x[2] - 0.5)            # another scale: class norms differ
    y = torch.tensor([0, 0, 2])
    m.step(net, x, y, StepContext())
    g = input_grad(net.net, net.inputs[0], y)
    assert torch.equal(m.momentum[1], mom[1]) and torch.equal(m.uap[1], u[1])
    for c, rows in ((0, [0, 1]), (2, [2])):
        expected = normalised_mean(g, rows) + 0.3 * mom[c]
        # entries where the two terms cancel keep float32's absolute error, no better
        assert torch.allclose(m.momentum[c], expected, rtol=1e-5, atol=1e-7)
        own_norm = g[rows].mean(0) / g[rows].abs().sum() + 0.3 * mom[c]
        assert not torch.allclose(m.momentum[c], own_norm, rtol=1e-2, atol=1e-7)
        clear = m.momentum[c].abs() > 1e-4 * m.momentum[c].abs().max()
        step = (u[c] + E_U * expected.sign()).clamp(-E_U, E_U)
        assert torch.equal(m.uap[c][clear], step[clear])


def test_each_example_starts_from_its_own_class_entry():
    """x0_i - x_i = clip_eps(U[y_i]). Ruled out: the bank indexed by position in the batch
    or by the model's prediction."""
    net = Recorder(Linear())
    m = create_method("fgsm-cuap", EPS)
    s = signs((3, *SHAPE))
    m.load_state_dict({"uap": E_U * s, "momentum": torch.zeros(3, *SHAPE)})
    x, _ = batch()
    y = torch.tensor([2, 0, 1, 2, 1, 0])
    m.step(net, x, y, StepContext())
    assert torch.equal(net.inputs[0], (x + EPS * s[y]).clamp(0, 1))
    assert m.uap.shape == (3, *SHAPE)          # one entry per class of the classifier


# -- FGSM-FUAP -----------------------------------------------------------------------------

def fuap_with_selector(net, x, y, hidden_bias, head_weight=None, head_bias=None, **kw):
    """A fgsm-fuap whose state has a zero bank and momentum, the given selector, and a
    fresh Adam state."""
    m = create_method("fgsm-fuap", EPS, uap_num=5, **kw)
    m.step(net, x, y, StepContext())                     # creates the state
    state = m.state_dict()
    width = state["selector"]["hidden.weight"].shape[1]
    state["uap"].zero_()
    state["momentum"].zero_()
    state["selector"] = {"hidden.weight": torch.zeros(5, width), "hidden.bias": hidden_bias,
                         "head.weight": torch.zeros(3, 5) if head_weight is None
                         else head_weight,
                         "head.bias": torch.zeros(3) if head_bias is None else head_bias}
    state["adam"] = {"step": 0, "exp_avg": [], "exp_avg_sq": []}
    m.load_state_dict(state)
    return m


def used_entries(m):
    return (m.momentum.flatten(1).abs().sum(1) > 0).nonzero().flatten().tolist()


def test_the_entry_is_the_argmax_of_the_selector_hidden_units_before_relu():
    """Every s_ij < 0 with a unique maximum at j = 3: the entry is 3. Ruled out: argmax of
    relu(s) (all zero: entry 0), argmax of the class outputs o (entry 1 here)."""
    torch.manual_seed(0)
    net = Linear()
    x, y = batch()
    bias = torch.tensor([-1.0, -1.0, -1.0, -0.5, -1.0])
    m = fuap_with_selector(net, x, y, bias, head_bias=torch.tensor([0.0, 5.0, 0.0]))
    m.step(net, x, y, StepContext())
    assert used_entries(m) == [3]
    rows = m.momentum.flatten(1).abs().sum(1)
    assert rows[3] > 0 and rows.sum() == rows[3]


def test_the_entry_is_chosen_before_the_selector_update():
    """A large selector step moves the argmax from entry 3 to entry 0 (checked); the step
    still uses entry 3. Ruled out: selecting with the updated selector."""
    torch.manual_seed(0)
    net = Linear()
    x, _ = batch()
    y = torch.zeros(6, dtype=torch.long)
    bias = torch.tensor([1.0, 1.0, 1.0, 1.01, 1.0])       # s_ij = b_j > 0, max at 3
    head = torch.zeros(3, 5)
    head[1, 3] = 1.0                                      # unit 3 votes for a wrong class
    m = fuap_with_selector(net, x, y, bias, head_weight=head, selector_lr=1.0)
    m.step(net, x, y, StepContext())
    assert used_entries(m) == [3]
    sel = m.selector
    s_after = F.linear(x.flatten(1), sel["hidden.weight"], sel["hidden.bias"])
    assert (s_after.argmax(1) != 3).all()                 # the update moved the argmax


def test_the_random_start_stays_in_the_fuap_start():
    """With U = 0 the start is x + clip_eps(eta), the point the features were taken at,
    not x. Ruled out: the fgsm-uap / fgsm-cuap start (no noise)."""
    torch.manual_seed(0)
    net = Recorder(Linear())
    x, y = batch()
    m = fuap_with_selector(net, x, y, torch.zeros(5))
    net.inputs.clear()
    m.step(net, x, y, StepContext())
    xr, x0 = net.inputs[0], net.inputs[1]               # features, then the attack's start
    assert torch.allclose(x0, xr, atol=1e-7, rtol=0)
    assert (x0 - x).abs().max() > EPS / 2 and (x0 - x).abs().max() <= EPS + 1e-7


def test_fuap_runs_three_train_mode_forwards_and_leaves_no_hook():
    """The feature forward is in train mode: BatchNorm counts 3 batches per step (features,
    start, adversarial). Ruled out: an eval-mode feature forward (2)."""
    torch.manual_seed(0)
    net = TinyNet(n_classes=3).train()
    x, y = batch()
    m = create_method("fgsm-fuap", EPS, uap_num=5)
    for _ in range(2):
        before = int(net.bn1.num_batches_tracked)
        m.step(net, x, y, StepContext())
        assert int(net.bn1.num_batches_tracked) == before + 3
    assert net.training and not net.fc._forward_pre_hooks
    assert m.state_dict()["selector"]["hidden.weight"].shape == (5, net.fc.in_features)


def test_the_selector_takes_pytorch_adam_steps():
    """Two steps of the selector equal torch.optim.Adam(lr) on the same features and
    CE_ls(o, y), bit for bit. Ruled out: SGD, Adam without bias correction, a step after
    the wrong loss (plain CE, or CE of the hidden units)."""
    torch.manual_seed(0)
    net = Recorder(Linear())                               # features = vec(x)
    x, y = batch()
    m = fuap_with_selector(net, x, y, 0.1 * torch.randn(5),
                           head_weight=0.1 * torch.randn(3, 5), selector_lr=0.05)
    start = m.state_dict()["selector"]
    start["hidden.weight"] = 0.1 * torch.randn(5, D)
    m.load_state_dict({**m.state_dict(), "selector": start})
    hidden, head = nn.Linear(D, 5), nn.Linear(5, 3)
    with torch.no_grad():
        for lin, k in ((hidden, "hidden"), (head, "head")):
            lin.weight.copy_(start[f"{k}.weight"])
            lin.bias.copy_(start[f"{k}.bias"])
    opt = torch.optim.Adam([*hidden.parameters(), *head.parameters()], lr=0.05,
                           foreach=False)
    for seed in (0, 1):
        net.inputs.clear()
        xs, ys = batch(seed=seed)
        m.step(net, xs, ys, StepContext())
        h = net.inputs[0].flatten(1)
        opt.zero_grad()
        F.cross_entropy(head(F.relu(hidden(h))), ys, label_smoothing=0.4).backward()
        opt.step()
    sel = m.selector
    for lin, k in ((hidden, "hidden"), (head, "head")):
        assert torch.equal(sel[f"{k}.weight"], lin.weight.detach())
        assert torch.equal(sel[f"{k}.bias"], lin.bias.detach())
    assert m.state_dict()["adam"]["step"] == 2


def test_adam_step_matches_torch_adam_over_many_steps():
    torch.manual_seed(0)
    p = torch.randn(7)
    q = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=0.01, foreach=False)
    state = {}
    for _ in range(5):
        g = torch.randn(7)
        adam_step([p], [g], state, 0.01)
        q.grad = g.clone()
        opt.step()
    assert torch.equal(p, q.detach()) and state["step"] == 5


# -- the family: recipe, refusals, state ----------------------------------------------------

def test_published_recipes_and_their_sources():
    fuap = METHODS["fgsm-fuap"]
    values, source = fuap.published("tinyimagenet", 8.0)
    assert values["uap_num"] == 300 and "test_tiny_imagenet/fgsm_uap_test.py" in source
    assert fuap.published("cifar100", 8.0)[0]["uap_num"] == 200
    values, source = fuap.published("svhn", 16.0)
    assert values["uap_num"] == 50 and source.startswith("nearest published: cifar10 eps 8")
    values, source = METHODS["fgsm-uap"].published("cifar10", 8.0)
    assert values == {"lamda": 10.0, "uap_scale": 1.25, "momentum_decay": 0.3,
                      "label_smoothing": 0.4}
    assert source.startswith("published cifar10 eps 8")
    assert "no official" in METHODS["fgsm-cuap"].published("cifar100", 8.0)[1]
    assert METHODS["fgsm-cuap"].published("cifar10", 0.5, "l2") is None
    for name in ("fgsm-uap", "fgsm-cuap", "fgsm-fuap"):
        cls = METHODS[name]
        assert cls.train_overrides == {}        # the EMA is the protocol's choice
        assert not cls.uses_averaged_model
        assert cls.strengthen_by == {"regularizer": "lamda", "step": "alpha"}


@pytest.mark.parametrize("name", ["fgsm-uap", "fgsm-cuap", "fgsm-fuap"])
def test_l2_and_bad_values_are_refused_in_one_line(name):
    with pytest.raises(UsageError, match=f"{name} has no l2 version"):
        create_method(name, 0.5, norm="l2")
    for bad in ({"lamda": -1.0}, {"uap_scale": 0.0}, {"momentum_decay": 1.0},
                {"label_smoothing": float("nan")}, {"alpha": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_method(name, EPS, **bad)
    m = create_method(name, EPS)
    again = create_method(name, EPS, **{k: v for k, v in m.hparams().items() if k != "eps"})
    assert again.hparams() == m.hparams()


def test_a_state_of_the_wrong_shape_is_refused():
    m = create_method("fgsm-fuap", EPS, uap_num=5)
    net, (x, y) = Linear(), batch()
    m.step(net, x, y, StepContext())
    state = m.state_dict()
    with pytest.raises(ValueError, match="4 UAPs, the method uap_num 5"):
        m.load_state_dict({**state, "uap": state["uap"][:4], "momentum": state["momentum"][:4]})
    with pytest.raises(ValueError, match="lacks"):
        create_method("fgsm-uap", EPS).load_state_dict({"uap": state["uap"]})
    m2 = create_method("fgsm-uap", EPS)
    m2.load_state_dict({"uap": torch.zeros(1, 3, 8, 8), "momentum": torch.zeros(1, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\), the batch has \(3, 4, 4\)"):
        m2.step(net, x, y, StepContext())


# -- the penultimate features of aaer's models ---------------------------------------------

@pytest.mark.parametrize("name", ["preactresnet18", "resnet18-imagenet", "wrn-10-1",
                                  "small-cnn", "linear"])
def test_penultimate_features_are_the_classifier_input(name):
    torch.manual_seed(0)
    model = build(name, 10, 3, 32, (0.5,) * 3, (0.25,) * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    head = classifier(model)
    with torch.no_grad():
        h, z = penultimate(model, x)
        assert torch.equal(z, model(x))
    assert h.shape == (2, head.in_features) and head.out_features == 10
    assert torch.equal(z, F.linear(h, head.weight, head.bias))
    assert not head._forward_pre_hooks


def test_a_model_without_a_linear_classifier_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 3, 4), nn.Flatten())
    with pytest.raises(UsageError, match="Sequential has no torch.nn.Linear classifier"):
        create_method("fgsm-cuap", EPS).step(net, *batch(), StepContext())


# -- data parallel: the bank of the global batch, the same on every process ---------------

def _ddp_worker(rank, store, out):
    import torch.distributed as dist
    from aaer.engine.distributed import batch_sum
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ctx = StepContext(batch_sum=batch_sum)
        x, y = batch(n=8)
        half = slice(4 * rank, 4 * rank + 4)
        results = {}
        for name in ("fgsm-uap", "fgsm-cuap", "fgsm-fuap", "liet"):
            torch.manual_seed(0)
            net = Linear()                                  # the same weights everywhere
            torch.manual_seed(100 + rank)                   # each process its own noise
            m = create_method(name, EPS, **({"uap_num": 5} if name == "fgsm-fuap" else {}))
            m.step(net, x[half], y[half], ctx)
            m.step(net, x[half], y[half], ctx)
            results[name] = m.state_dict()
        for name in ("fgsm-uap", "fgsm-cuap"):
            torch.manual_seed(0)
            net = Linear()
            m = create_method(name, EPS)
            n = 1 if name == "fgsm-uap" else 3
            m.load_state_dict({"uap": E_U * signs((n, *SHAPE)),
                               "momentum": 1e-3 * signs((n, *SHAPE), seed=2)})
            m.step(net, x[half], y[half], ctx)
            results[name + " given"] = m.state_dict()
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_keep_one_bank_equal_to_one_process_on_the_global_batch(tmp_path):
    """Under DDP each process has half the batch: the bank, momentum, selector and its Adam
    state and LIET's label information are the same on both, and the bank update equals
    the one process on the global batch. Ruled out: per-process updates (the banks
    diverge), an average of per-process means (differs when a class's count differs), a
    per-process L1 norm."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    for name in r0:
        assert same(r0[name], r1[name]), name
    assert r0["fgsm-fuap"]["adam"]["step"] == 2 and r0["liet"]["li"].shape == (3, *SHAPE)
    x, y = batch(n=8)                                      # labels 0,1,2,0 | 1,2,0,1
    for name, n in (("fgsm-uap", 1), ("fgsm-cuap", 3)):
        torch.manual_seed(0)
        net = Linear()
        m = create_method(name, EPS)
        mom = 1e-3 * signs((n, *SHAPE), seed=2)
        m.load_state_dict({"uap": E_U * signs((n, *SHAPE)), "momentum": mom})
        m.step(net, x, y, StepContext())
        two = r0[name + " given"]
        assert torch.allclose(two["momentum"], m.momentum, rtol=1e-5, atol=1e-10), name
        clear = m.momentum.abs() > 1e-4 * m.momentum.abs().max()
        assert torch.equal(two["uap"][clear], m.uap[clear]), name
