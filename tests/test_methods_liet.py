"""LIET (Pan, Tang, Li, Yao, ICCV 2025): non-uniform label smoothing, the JS term, the label
information, the masked +-LI start, the projection rule and the lambda ramp, against exact
oracles (docs/methods/liet.md, "Defining property and tests")."""
import math

import pytest
import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.liet import js_divergence, nls_cross_entropy, nls_targets
from tests.helpers.tiny import TinyNet
from tests.helpers.linear import D, SHAPE, Linear, Recorder, batch

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255


def test_nls_targets_put_1_minus_ls_on_the_label_and_fresh_random_shares_elsewhere():
    """Ruled out: PyTorch's uniform label_smoothing (1 - ls + ls/K = 0.46 on the label at
    ls 0.6, K 10), targets drawn once and reused."""
    torch.manual_seed(0)
    z, y = torch.randn(5, 10), torch.tensor([0, 3, 9, 3, 1])
    t = nls_targets(z, y, 0.6)
    rows = torch.arange(5)
    assert torch.equal(t[rows, y], torch.full((5,), 1 - 0.6))
    others = t.clone()
    others[rows, y] = 0
    assert (others >= 0).all() and torch.allclose(others.sum(1), torch.full((5,), 0.6))
    assert others.std(1).min() > 0.01                    # not uniform over the others
    assert not torch.equal(t, nls_targets(z, y, 0.6))    # a fresh draw at every call
    torch.manual_seed(1)
    t = nls_targets(z, y, 0.6)
    torch.manual_seed(1)
    loss = nls_cross_entropy(z, y, 0.6)
    assert loss.item() == pytest.approx(-(t * F.log_softmax(z, 1)).sum(1).mean().item(),
                                        rel=1e-6)
    assert t[0, 0].item() != pytest.approx(1 - 0.6 + 0.6 / 10)
    assert torch.equal(nls_targets(z, y, 0.0), F.one_hot(y, 10).float())   # ls 0: plain CE


def test_js_is_the_natural_log_jensen_shannon_of_the_two_softmaxes():
    """Disjoint one-hot predictions: ln 2; equal ones: 0; in general the closed form
    (1/2) sum p log(2p / (p + q)) + (1/2) sum q log(2q / (p + q)), mean over the batch.
    Ruled out: KL(p || q) (infinite for disjoint), base 2 (1.0), a sum over the batch."""
    big = 1000.0
    assert js_divergence(torch.tensor([[0.0, -big]]), torch.tensor([[-big, 0.0]])).item() \
        == pytest.approx(math.log(2), rel=1e-6)
    z = torch.randn(4, 5)
    assert js_divergence(z, z).item() == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    z0, z1 = torch.randn(6, 5), torch.randn(6, 5)
    p, q = F.softmax(z0.double(), 1), F.softmax(z1.double(), 1)
    closed = (0.5 * (p * (2 * p / (p + q)).log()).sum(1) +
              0.5 * (q * (2 * q / (p + q)).log()).sum(1)).mean()
    assert js_divergence(z0, z1).item() == pytest.approx(closed.item(), rel=1e-5)


def test_label_information_is_eps_sign_of_the_gray_image_gradient_in_eval_mode():
    """For z = W vec(x) and ls = 0: LI[c] = eps sign(W^T (softmax(W g) - e_c)), g the gray
    image. Ruled out: the gradient at the batch's images, a descent sign, one LI for all
    classes."""
    torch.manual_seed(0)
    net = Linear(k=3)
    m = create_method("liet", EPS, label_smoothing=0.0)
    x, y = batch()
    m.step(net, x, y, StepContext())
    W = net.fc.weight.detach()
    p = F.softmax(W @ torch.full((D,), 0.5), 0)
    grad = W.t() @ (p.view(-1, 1) - torch.eye(3))          # [D, K]: column c for class c
    assert grad.abs().min() > 1e-6                         # no sign is a rounding call
    assert torch.equal(m.li, EPS * grad.t().sign().view(3, *SHAPE))


def test_label_information_leaves_batchnorm_alone_and_is_renewed_every_li_update_batches():
    """The LI forward is in eval mode: BatchNorm counts the two training forwards only,
    and the model is back in train mode. LI is recomputed at batches 0, li_update, ..."""
    torch.manual_seed(0)
    tiny = TinyNet(n_classes=3).train()
    net = Recorder(tiny)
    m = create_method("liet", EPS, li_update=2)
    x, y = batch()
    for i, forwards in enumerate((3, 2, 3, 2)):
        before = int(tiny.bn1.num_batches_tracked)
        net.inputs.clear()
        m.step(net, x, y, StepContext(iteration=i))
        assert len(net.inputs) == forwards and tiny.training
        assert int(tiny.bn1.num_batches_tracked) == before + 2
    assert m.li.shape == (3, *SHAPE)


def starts(m, x, y, steps=1):
    """The starts x0 of consecutive steps (LI computed at the first, kept)."""
    torch.manual_seed(0)
    net = Recorder(Linear(k=3))
    out = []
    for _ in range(steps):
        net.inputs.clear()
        m.step(net, x, y, StepContext(iteration=1 if m.li is not None else 0))
        out.append(net.inputs[-2])
    return out


def test_unmasked_start_is_plus_or_minus_li_of_the_label_with_one_coin_per_batch():
    """r_min = r_max = 0: x0 - x = s LI[y], the same s for the whole batch, both signs seen.
    Ruled out: always adding, a coin per example, LI indexed by anything but the label."""
    m = create_method("liet", EPS, min_mask_ratio=0.0, max_mask_ratio=0.0)
    x, y = batch(n=12)
    seen = set()
    for x0 in starts(m, x, y, 12):
        d = x0 - x
        li = m.li[y]
        if torch.allclose(d, li, atol=1e-6, rtol=0):
            seen.add(1)
        else:
            assert torch.allclose(d, -li, atol=1e-6, rtol=0)
            seen.add(-1)
    assert seen == {1, -1}


def test_the_mask_replaces_the_drawn_share_of_li_by_noise_of_the_right_range():
    """r = 0.3: 30 % of the entries are U(-eps, eps) noise, the rest +-eps; r = 1: all noise
    (U(-2 eps, 2 eps) at eps 16/255). Ruled out: the mask inverted (70 %), the noise range
    not doubled at large eps."""
    x, y = batch(n=64)
    m = create_method("liet", EPS, min_mask_ratio=0.3, max_mask_ratio=0.3)
    (x0,) = starts(m, x, y)
    d = (x0 - x).abs()
    noisy = ((d - EPS).abs() > 1e-6).float().mean().item()
    assert noisy == pytest.approx(0.3, abs=0.04) and d.max() <= EPS + 1e-6
    big = 16 / 255
    xs = 0.3 + 0.4 * (x - 0.1) / 0.8                        # room for 3 eps inside the box
    m = create_method("liet", big, min_mask_ratio=1.0, max_mask_ratio=1.0)
    (x0,) = starts(m, xs, y)
    d = (x0 - xs).abs()
    assert d.max() <= 2 * big + 1e-6 and d.max() > 1.9 * big
    assert d.mean().item() == pytest.approx(big, rel=0.05)   # U(-2 eps, 2 eps): mean |d| = eps


def test_projection_at_eps_8_and_none_above():
    """eps <= 8/255: |x1 - x| <= eps (clamp 1); eps 16/255: no projection, |x1 - x| reaches
    3 eps (clamp 0). Ruled out: projecting at every eps, or never."""
    torch.manual_seed(0)
    x, y = batch(n=32)
    x = 0.3 + 0.4 * (x - 0.1) / 0.8
    for eps, clamp in ((EPS, 1), (16 / 255, 0)):
        m = create_method("liet", eps, min_mask_ratio=1.0, max_mask_ratio=1.0)
        assert m.hparams()["clamp"] == clamp
        net = Recorder(Linear(k=3))
        m.step(net, x, y, StepContext())
        far = (net.inputs[2] - x).abs().max().item()
        if clamp:
            assert far <= eps + 1e-6
        else:
            assert 2.5 * eps < far <= 3 * eps + 1e-6
    assert create_method("liet", 16 / 255, clamp=1).clamp == 1   # --clamp overrides


@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_the_loss_is_ce_plus_ramped_lambda_js_between_start_and_adversarial(epoch):
    """loss = CE_nls(f(x1)) + lamda (e + 1)/E JS(f(x0), f(x1)), gradient through both.
    Ruled out: the paper's JS(f(x), f(x1)) at the clean x, f(x0) detached, lamda e/E
    (zero in the first epoch), a constant lamda."""
    torch.manual_seed(0)
    net = Recorder(Linear(k=3))
    m = create_method("liet", EPS, lamda=10.0, label_smoothing=0.0)
    x, y = batch()
    out = m.step(net, x, y, StepContext(epoch=epoch, total_epochs=4))
    out.loss.backward()
    lam = 10.0 * (epoch + 1) / 4
    assert out.stats["liet_lambda_sum"].item() == pytest.approx(lam * 6)
    W = net.net.fc.weight.detach().clone().requires_grad_(True)
    x0, x1 = net.inputs[1].flatten(1), net.inputs[2].flatten(1)
    oracle = F.cross_entropy(x1 @ W.t(), y) + lam * js_divergence(x0 @ W.t(), x1 @ W.t())
    assert out.loss.item() == pytest.approx(oracle.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(oracle, W)
    assert torch.allclose(net.net.fc.weight.grad, grad, rtol=1e-5, atol=1e-8)
    clean = F.cross_entropy(x1 @ W.t(), y) + lam * js_divergence(x.flatten(1) @ W.t(),
                                                                 x1 @ W.t())
    assert clean.item() != pytest.approx(oracle.item(), rel=1e-4)
    Wd = W.detach().clone().requires_grad_(True)
    half = F.cross_entropy(x1 @ Wd.t(), y) + lam * js_divergence((x0 @ Wd.t()).detach(),
                                                                 x1 @ Wd.t())
    (g_half,) = torch.autograd.grad(half, Wd)
    assert not torch.allclose(g_half, grad, rtol=1e-3, atol=1e-8)


def test_published_values_follow_the_configs_and_name_the_paper_disagreement():
    liet = METHODS["liet"]
    values, source = liet.published("cifar100", 8.0)
    assert values == {"lamda": 200.0, "label_smoothing": 0.8, "min_mask_ratio": 0.1,
                      "max_mask_ratio": 0.5, "li_update": 20}
    assert "configs.yaml cifar100" in source and "App. C" in source
    assert liet.published("tinyimagenet", 8.0)[0]["label_smoothing"] == 0.6
    assert liet.published("cifar10", 8.0)[0]["li_update"] == 20
    assert liet.published("cifar10", 16.0)[0] == {"lamda": 20.0, "label_smoothing": 0.4,
                                                  "min_mask_ratio": 0.0,
                                                  "max_mask_ratio": 1.0, "li_update": 10}
    assert liet.published("tinyimagenet", 12.0)[0]["li_update"] == 20
    values, source = liet.published("svhn", 8.0)
    assert values["lamda"] == 100.0 and source.startswith("nearest published: cifar10 eps 8")
    assert liet.published("cifar10", 0.5, "l2") is None
    assert liet.train_overrides == {} and not liet.uses_averaged_model   # EMA: the protocol's


def test_l2_and_bad_values_are_refused():
    with pytest.raises(UsageError, match="liet has no l2 version"):
        create_method("liet", 0.5, norm="l2")
    for bad, what in (({"min_mask_ratio": 0.6}, "mask ratios"), ({"max_mask_ratio": 1.5},
                      "mask ratios"), ({"li_update": 0}, "li_update"),
                      ({"label_smoothing": 1.0}, "label_smoothing"), ({"lamda": -1}, "lamda"),
                      ({"clamp": 2}, "clamp")):
        with pytest.raises(ValueError, match=what):
            create_method("liet", EPS, **bad)
    m = create_method("liet", 16 / 255)
    again = create_method("liet", 16 / 255,
                          **{k: v for k, v in m.hparams().items() if k != "eps"})
    assert again.hparams() == m.hparams() and m.hparams()["clamp"] == 0


def test_state_holds_the_label_information():
    torch.manual_seed(0)
    m = create_method("liet", EPS)
    assert m.state_dict() == {}
    net, (x, y) = Linear(k=3), batch()
    m.step(net, x, y, StepContext())
    state = m.state_dict()
    other = create_method("liet", EPS)
    other.load_state_dict(state)
    assert torch.equal(other.li, m.li)
    with pytest.raises(ValueError, match="lacks 'li'"):
        other.load_state_dict({"lix": state["li"]})
