"""Reference parity: SPEC §2 transcribed line by line vs the library's AAER step.

The transcription below is written from the spec with the reference's own idioms
(boolean indexing, .item() for NV, Python max for the hinge, loss.backward() for the
attack gradient) and is deliberately independent of aaer.methods.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from aaer.methods import StepContext, create_method
from tests.helpers.tiny import TinyNet

EPS = 16 / 255


def reference_step(model, x, y, eps, alpha_mult, clamp, l1w, l2w, l3w, seed):
    """SPEC §2, one training step, written as the reference does it. Returns loss."""
    alpha = alpha_mult * eps
    torch.manual_seed(seed)
    delta = torch.zeros_like(x)
    if clamp:
        delta.uniform_(-eps, eps)
    else:
        delta.uniform_(-2 * eps, 2 * eps)
    delta = torch.max(torch.min(delta, 1 - x), 0 - x)          # x + eta in [0, 1]
    delta.requires_grad = True
    output = model(x + delta)
    output_org = output.detach()
    loss = F.cross_entropy(output, y, reduction="none")
    loss_before = loss.detach()
    loss.mean().backward()                                      # fills weight grads too
    grad = delta.grad.detach()
    delta = delta.detach() + alpha * torch.sign(grad)
    if clamp:
        delta = torch.max(torch.min(delta, torch.full_like(delta, eps)),
                          torch.full_like(delta, -eps))
    delta = torch.max(torch.min(delta, 1 - x), 0 - x)
    model.zero_grad()                                           # the reference's opt.zero_grad()
    output = model(torch.clamp(x + delta, 0, 1))
    loss = F.cross_entropy(output, y, reduction="none")
    loss_after = loss.detach()
    loss = loss.mean()
    abnormal = loss_before > loss_after
    normal = loss_before <= loss_after
    a_count = int(abnormal.sum())
    n_count = int(normal.sum())
    if a_count != 0:
        d = output_org[abnormal] - output[abnormal]
        abnormal_variation = (d * d).sum(1).mean(0)
        abnormal_ce = (abnormal * (loss_before - loss_after)).sum() / a_count
    if n_count != 0:
        d = output_org[normal] - output[normal]
        normal_variation = (d * d).sum(1).mean(0)
    if a_count != 0 and n_count != 0:
        loss = loss + (l1w * a_count / y.size(0)) * (
            l2w * abnormal_ce + l3w * max(abnormal_variation - normal_variation.item(), 0))
    return loss, a_count


def _setup(seed=1):
    torch.manual_seed(seed)
    model = TinyNet(width=8, freq=40.0).double()
    x = torch.rand(32, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    return model, x, y


def _library_step(model, x, y, method_name, seed, **hp):
    method = create_method(method_name, EPS, **hp)
    torch.manual_seed(seed)
    out = method.step(model, x, y, StepContext())
    model.zero_grad()
    out.loss.backward()
    return out


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _max_rel(a, b):
    return max(float((u - v).abs().max() / (v.abs().max() + 1e-30)) for u, v in zip(a, b))


@pytest.mark.parametrize("name,alpha,clamp,lam", [
    ("rs-aaer", 1.25, 1, (1.0, 2.5, 1.5)),
    ("n-aaer", 1.0, 0, (1.0, 1.5, 0.15)),
    ("n-aaer", 1.0, 0, (1.0, 8.5, 30.0)),   # a hinge weight large enough to dominate
])
def test_library_step_matches_reference(name, alpha, clamp, lam):
    torch.use_deterministic_algorithms(True)
    model, x, y = _setup()
    ref_model = copy.deepcopy(model)
    ref_loss, m = reference_step(ref_model, x, y, EPS, alpha, clamp, *lam, seed=7)
    ref_loss.backward()
    assert 0 < m < x.shape[0], "the batch must contain AAEs and normal examples"

    out = _library_step(model, x, y, name, seed=7, alpha=alpha, clamp=clamp,
                        lamda1=lam[0], lamda2=lam[1], lamda3=lam[2])
    assert float(out.stats["aae_count"]) == m
    assert abs(float(out.loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert _max_rel(_grads(model), _grads(ref_model)) <= 1e-5
    # BatchNorm running statistics were updated by both forwards, identically
    for (k, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-9), k


def test_reference_mode_lamda2_changes_loss_not_gradients():
    grads, losses = [], []
    for lamda2 in (0.0, 10.0):
        model, x, y = _setup()
        out = _library_step(model, x, y, "n-aaer", seed=7, lamda2=lamda2, lamda3=0.5)
        grads.append(_grads(model))
        losses.append(float(out.loss.detach()))
    assert losses[1] > losses[0] + 1e-3
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_paper_mode_lamda2_changes_gradients():
    grads = []
    for lamda2 in (0.0, 10.0):
        model, x, y = _setup()
        _library_step(model, x, y, "n-aaer", seed=7, lamda2=lamda2, lamda3=0.5, mode="paper")
        grads.append(_grads(model))
    assert _max_rel(grads[1], grads[0]) > 1e-3


def test_paper_and_reference_mode_agree_when_lamda2_zero():
    outs = []
    for mode in ("reference", "paper"):
        model, x, y = _setup()
        out = _library_step(model, x, y, "rs-aaer", seed=3, lamda2=0.0, lamda3=1.5, mode=mode)
        outs.append((float(out.loss), _grads(model)))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-12)
    assert _max_rel(outs[0][1], outs[1][1]) < 1e-12


def test_logged_hinge_is_the_gradient_carrying_part_of_the_term():
    # reference mode: loss = mean(l1) + lamda1 (m/B) (lamda2 CEvar + lamda3 max(AV - NV, 0));
    # the logged hinge part is the last summand, and it is on exactly when AV > NV
    seen = set()
    for seed in range(12):
        model, x, y = _setup(seed)
        method = create_method("n-aaer", EPS, lamda1=1.5, lamda2=2.0, lamda3=0.5)
        torch.manual_seed(seed)
        z0, l0, z1, l1, _ = method.attack(model, x, y, StepContext())
        torch.manual_seed(seed)
        out = method.step(model, x, y, StepContext())
        aae = l0 > l1
        m, B = int(aae.sum()), len(y)
        var = (z1 - z0).pow(2).sum(1)
        av, nv = var[aae].mean().item(), var[~aae].mean().item()
        on = 0 < m < B and av > nv
        seen.add(on)
        assert float(out.stats["aaer_hinge_on_sum"]) == (B if on else 0)
        hinge = 1.5 * m / B * 0.5 * max(av - nv, 0.0) if 0 < m < B else 0.0
        assert float(out.stats["aaer_hinge_reg_sum"]) / B == pytest.approx(hinge, rel=1e-6, abs=1e-12)
        ce = 1.5 * m / B * 2.0 * (l0 - l1)[aae].mean().item() if 0 < m < B else 0.0
        assert float(out.loss) == pytest.approx(l1.mean().item() + ce + hinge, rel=1e-6)  # fp32 term
    assert seen == {True, False}          # both branches met
