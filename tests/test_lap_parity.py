"""Reference parity: the official LAP training iteration transcribed vs aaer's v/r/n-lap.

``official_iteration`` below is written from tmllab/2024_ICML_LAP CIFAR10/LAP.py lines
99-151 and utils.py lines 26-46 (docs/methods/lap.md), operation by operation with the
official code's own idioms (a proxy network and a proxy optimiser over the model's own
parameters, state-dict round trips, a real optimiser step, min/max clamps, numpy's log and
power for the layer coefficients), in pixel space (normalisation is the identity here,
SPEC §2). It is deliberately independent of aaer.methods.

Optimizer.load_state_dict is the one call whose behaviour changed under the official
code: torch 2.0.1, which requirements.txt pins, deep-copies the state it loads (torch
2.0.1 torch/optim/optimizer.py line 379); torch >= 2.1 makes a shallow copy and keeps
the tensors (2.1.0 optimizer.py line 716), so the proxy optimiser shares the momentum
buffers. ``load_optimizer`` transcribes both: "2.0.1" is aaer's ``reference`` mode,
"installed" (this venv's torch, checked to be >= 2.1) its ``shared-momentum`` mode.

Everything runs in float64 over four consecutive iterations with fresh batches and a
cyclic schedule (lr and momentum change every iteration), so the first iteration meets
an empty optimiser state and the later ones an existing one. After every iteration the
loss, the logits, the weights w~ the second forward saw, every parameter, every
BatchNorm buffer and every momentum buffer agree with the transcription to
TOL = 1e-12 relative to the largest entry (float64 rounding: the two sides clip the start
noise with different but equal-in-exact-arithmetic formulas).
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aaer.methods import StepContext, create_method
from aaer.methods.base import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
TOL = 1e-12
VARIANTS = {  # name: (delta_init, clamp, alpha) as the README's commands give them
    "v-lap": ("zero", 1, 1.0),
    "r-lap": ("random", 1, 1.25),
    "n-lap": ("random", 0, 1.0),
}
MODE = {"2.0.1": "reference", "installed": "shared-momentum"}


class TinyPreAct(nn.Module):
    """A PreActResNet in miniature: stem conv, one pre-activation block with a 1x1
    shortcut registered after conv2 (as the official PreActBlock), BN, a linear layer with
    bias. Five perturbed tensors: conv1, block.conv1, block.conv2, block.shortcut.0, linear;
    the BN weights (1-D) and the biases are not."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.block = nn.Module()
        self.block.bn1 = nn.BatchNorm2d(4)
        self.block.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.block.bn2 = nn.BatchNorm2d(6)
        self.block.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.block.shortcut = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False))
        self.bn = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, 10)

    def forward(self, x):
        out = self.conv1(x)
        b = self.block
        pre = F.relu(b.bn1(out))
        h = b.conv2(F.relu(b.bn2(b.conv1(pre))))
        out = h + b.shortcut(pre)
        out = F.relu(self.bn(out))
        return self.linear(out.mean((2, 3)))


# -- the official iteration, transcribed -------------------------------------------------

def load_optimizer(opt, state_dict, torch_version):
    if torch_version == "2.0.1":          # its load_state_dict starts with a deepcopy
        state_dict = copy.deepcopy(state_dict)
    opt.load_state_dict(state_dict)


def diff_in_weights(old_model, new_model):
    diff = {}
    for (k, w_old), (_, w_new) in zip(old_model.state_dict().items(),
                                      new_model.state_dict().items()):
        if len(w_old.size()) <= 1:
            continue
        if "weight" in k:
            dw = w_new - w_old
            diff[k] = w_old.norm() / (dw.norm() + 1e-20) * dw
    return diff


def add_into_weights(model, diff, gamma, beta, layer_number):
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                count += 1
                layer_weight = 1.0 - np.power(np.log(count) / np.log(layer_number), gamma)
                p.add_(layer_weight * beta * diff[name])


def official_iteration(model, proxy, opt, proxy_opt, sched, x, y, eta, *, alpha, clamp, beta,
                       gamma, layer_number, torch_version):
    model.train()
    proxy.train()
    delta = torch.max(torch.min(eta, 1 - x), 0 - x)
    delta.requires_grad = True
    output = model(x + delta)
    loss = F.cross_entropy(output, y)

    proxy.load_state_dict(model.state_dict())
    load_optimizer(proxy_opt, opt.state_dict(), torch_version)

    opt.zero_grad()
    loss.backward()
    opt.step()

    grad = delta.grad.detach()
    delta.data = delta + alpha * EPS * torch.sign(grad)
    if clamp:
        delta.data = torch.max(torch.min(delta, torch.full_like(delta, EPS)),
                               torch.full_like(delta, -EPS))
    delta.data = torch.max(torch.min(delta, 1 - x), 0 - x)
    delta = delta.detach()

    diff = diff_in_weights(proxy, model)
    model.load_state_dict(proxy.state_dict())
    load_optimizer(opt, proxy_opt.state_dict(), torch_version)

    model.train()
    add_into_weights(model, diff, gamma, beta, layer_number)
    output = model(torch.clamp(x + delta, 0, 1))
    loss = F.cross_entropy(output, y, reduction="none").mean()

    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach(), output.detach()


# -- the two sides -----------------------------------------------------------------------

def _optimiser(model, base_lr):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base_lr, max_lr=0.2,
                                              step_size_up=2, step_size_down=2)
    return opt, sched


def _seen_weights(model):
    """Records the parameters every forward pass sees."""
    seen = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    return seen


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(16, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _start_noise(x, delta_init, clamp, seed):
    """The draw aaer's step makes after torch.manual_seed(seed): U(-r, r) per pixel in one
    call (the official draws channel by channel: the same distribution, another order of
    the random stream)."""
    if delta_init == "zero":
        return torch.zeros_like(x)
    radius = EPS if clamp else 2 * EPS
    torch.manual_seed(seed)
    return torch.empty_like(x).uniform_(-radius, radius)


def _state(model, opt):
    out = {f"param {k}": v for k, v in model.state_dict().items()}
    for n, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        out[f"momentum {n}"] = None if buf is None else buf.detach().clone()
    return out


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    if not a.is_floating_point():
        return torch.equal(a, b)
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) <= TOL * scale


def _assert_same(library, reference, what):
    assert library.keys() == reference.keys(), what
    bad = [k for k in reference if not _close(library[k], reference[k])]
    assert not bad, f"{what}: {bad[:4]}"


@pytest.mark.parametrize("base_lr", [0.0, 0.02])
@pytest.mark.parametrize("layer_number", [None, 21])
@pytest.mark.parametrize("torch_version", ["2.0.1", "installed"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_four_iterations_equal_the_official_code(name, torch_version, layer_number, base_lr):
    """base_lr 0: the official schedule (no perturbation at the first iteration, lr 0);
    0.02: the first iteration perturbs the weights from an empty optimiser state.
    layer_number None: aaer's default, the model's 5 perturbed tensors (the official
    script is given 5); 21: the official default, larger than the model's count."""
    if torch_version == "installed":
        _check_installed_torch_shares_buffers()
    torch.use_deterministic_algorithms(True)
    delta_init, clamp, alpha = VARIANTS[name]
    beta, gamma = 0.05, 0.3
    torch.manual_seed(0)
    net = TinyPreAct().double()
    ref, proxy = copy.deepcopy(net), TinyPreAct().double()
    ref_opt, ref_sched = _optimiser(ref, base_lr)
    proxy_opt, _ = _optimiser(ref, base_lr)                 # over the MODEL's parameters
    opt, sched = _optimiser(net, base_lr)
    method = create_method(name, EPS, beta=beta, gamma=gamma, layer_number=layer_number,
                           lap_mode=MODE[torch_version])
    weights = Weights(net, opt)
    seen, ref_seen = _seen_weights(net), _seen_weights(ref)

    for i, (x, y) in enumerate(_batches()):
        eta = _start_noise(x, delta_init, clamp, seed=10 + i)
        ref_loss, ref_z1 = official_iteration(
            ref, proxy, ref_opt, proxy_opt, ref_sched, x, y, eta, alpha=alpha, clamp=clamp,
            beta=beta, gamma=gamma, layer_number=layer_number or 5,
            torch_version=torch_version)

        torch.manual_seed(10 + i)
        out = method.step(net, x, y, StepContext(iteration=i, weights=weights))
        opt.zero_grad(set_to_none=True)                     # what the training loop does
        out.loss.backward()
        weights.restore()
        opt.step()
        sched.step()

        assert _close(out.loss.detach(), ref_loss), (i, float(out.loss), float(ref_loss))
        assert _close(out.logits, ref_z1), i
        _assert_same(seen[-1], ref_seen[-1], f"iteration {i}: weights at the second forward")
        _assert_same(_state(net, opt), _state(ref, ref_opt), f"iteration {i}: state after")
        if i > 0 or base_lr > 0:                            # the weights really moved
            assert any(not torch.equal(seen[-1][k], seen[-2][k]) for k in seen[-1])
    # every parameter has a momentum buffer after four iterations
    assert all("momentum_buffer" in opt.state[p] for p in net.parameters())


def _check_installed_torch_shares_buffers():
    """The "installed" transcription stands for torch >= 2.1: loading a state dict keeps
    the very momentum tensors (else this venv cannot represent that behaviour)."""
    lin = nn.Linear(2, 2)
    a = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    b = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.ones(1, 2)).sum().backward()
    a.step()
    b.load_state_dict(a.state_dict())
    assert b.state[lin.weight]["momentum_buffer"] is a.state[lin.weight]["momentum_buffer"]


def test_the_training_loop_runs_the_official_iteration(tmp_path):
    """The same comparison through aaer's own trainer (its optimiser, schedule, context and
    step order), converted to float64: three iterations of r-lap (reference mode) on
    small-cnn equal the transcription run on a copy of the trainer's model, with the
    official CyclicLR built by hand (step_size_up = step_size_down = lr_steps / 2)."""
    from aaer.data import Dataset
    from aaer.training import TrainConfig, build_trainer

    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(0)
    ds = Dataset("tiny", torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8, generator=g),
                 torch.arange(48) % 4, torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                 torch.zeros(4, dtype=torch.long), ["0", "1", "2", "3"],
                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model="small-cnn", method="r-lap",
                      method_hparams={"beta": 0.05}, epochs=1, batch_size=16,
                      eval_protocol=None, progress=False, device="cpu", seed=0)
    t = build_trainer(cfg, ds)
    t.model.double()
    ref, proxy = copy.deepcopy(t.model), copy.deepcopy(t.model)
    o = t.cfg.optim
    ref_opt = torch.optim.SGD(ref.parameters(), lr=o.lr_max, momentum=o.momentum,
                              weight_decay=o.weight_decay)
    proxy_opt = torch.optim.SGD(ref.parameters(), lr=o.lr_max, momentum=o.momentum,
                                weight_decay=o.weight_decay)
    steps = o.epochs * len(t.loader)
    ref_sched = torch.optim.lr_scheduler.CyclicLR(ref_opt, base_lr=o.lr_min, max_lr=o.lr_max,
                                                  step_size_up=steps / 2,
                                                  step_size_down=steps / 2)
    seen, ref_seen = _seen_weights(t.model), _seen_weights(ref)
    for i, (x, y, index) in enumerate(t.loader.indexed()):
        x = x.double()
        eta = _start_noise(x, "random", 1, seed=20 + i)
        ref_loss, _ = official_iteration(ref, proxy, ref_opt, proxy_opt, ref_sched, x, y, eta,
                                         alpha=1.25, clamp=1, beta=0.05, gamma=0.3,
                                         layer_number=5, torch_version="2.0.1")
        torch.manual_seed(20 + i)
        out = t.train_step(x, y, t.context(0, i, index))
        assert _close(out.loss.detach(), ref_loss), i
        _assert_same(seen[-1], ref_seen[-1], f"iteration {i}: weights at the second forward")
        _assert_same(_state(t.model, t.opt), _state(ref, ref_opt), f"iteration {i}")
    assert i == 2
    t.close()
