"""What the engine lends a method, each used by a toy method here: per-example state (kept by
training-set index; exact on a mid-epoch resume; rewound by a rollback), a perturbation of
the weights inside the step (the optimiser sees the unperturbed weights), and the averaged
model (a hand-computed EMA; what is evaluated is a named, recorded choice).
"""
import copy
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from aaer.errors import TrainingInterrupted
from aaer.methods import METHODS
from aaer.methods.base import (Cost, Method, MemorySlot, StepOutput, clip_to_box,
                               forward_with_input_grad, project)
from aaer.runs import read_checkpoint
from aaer.training import TrainConfig, build_trainer, resume, train
from tests.helpers.tiny import scripted_probes, signal_at, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(n_train=50, n_test=16):
    return tiny_dataset(n_train=n_train, n_test=n_test, size=8, classes=4, name="synthetic")


def _cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), dataset="synthetic", model="small-cnn",
                method="toy-remember", epsilon=32, epochs=3, batch_size=16, lr_max=0.05,
                eval_protocol=None, progress=False, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


class Remember(Method):
    """A toy single-step method with per-example state: each example's attack starts from
    the perturbation it ended with the last time it was seen (as FGSM-PGI's does), and the
    method counts how often, and in which epoch last, it saw each example."""

    name = "toy-remember"
    strengthen_by = {"step": "alpha"}

    def __init__(self, eps, alpha=1.0, norm="linf"):
        super().__init__(eps, norm)
        self.alpha = alpha

    def memory_spec(self, example_shape):
        return {"delta": MemorySlot(example_shape), "seen": MemorySlot((), torch.int64),
                "epoch": MemorySlot((), torch.int64, -1)}

    def cost(self):
        return Cost(2, 2)

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "norm": self.norm}

    def step(self, model, x, y, ctx):
        mem, i = ctx.memory, ctx.index
        eta = clip_to_box(x, mem.read("delta", i))
        _, _, g = forward_with_input_grad(model, x + eta, y)
        delta = clip_to_box(x, project(eta + self.alpha * self.eps * g.sign(), self.eps,
                                       "linf"))
        mem.write("delta", i, delta)
        mem.write("seen", i, mem.read("seen", i) + 1)
        mem.write("epoch", i, torch.full_like(i, ctx.epoch))
        z = model(x + delta)
        return StepOutput(F.cross_entropy(z, y), z.detach())


@pytest.fixture(autouse=True)
def toy_methods(monkeypatch):
    monkeypatch.setitem(METHODS, Remember.name, Remember)
    monkeypatch.setitem(METHODS, Perturb.name, Perturb)
    monkeypatch.setitem(METHODS, Teacher.name, Teacher)


def _memory(run_dir):
    return read_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["memory"]


def test_per_example_state_is_kept_by_training_set_index(tmp_path):
    """50 examples in batches of 16 (the last batch holds 2), shuffled, 3 epochs: every
    example was seen exactly 3 times, last in epoch 2, and its remembered perturbation is in
    the eps-ball. Rules out state keyed by the batch's position (the official FGSM-PGI
    code's batch index: with a shuffled order the counts would be uneven) and a last
    partial batch that is dropped or written twice."""
    ds = _dataset()
    train(_cfg(tmp_path, "run"), ds)
    mem = _memory(tmp_path / "run")
    assert mem["seen"].tolist() == [3] * 50
    assert mem["epoch"].tolist() == [2] * 50
    eps = 32 / 255
    assert mem["delta"].abs().max() <= eps + 1e-7 and mem["delta"].abs().sum(dim=(1, 2, 3)).min() > 0


def test_per_example_state_resumes_bitwise_mid_epoch(tmp_path):
    """Stopped after step 1 of epoch 1 and resumed: the weights and every remembered
    perturbation equal the uninterrupted run's, bit for bit (a resume that restarted the
    memory from zeros, or from the last epoch's end, changes both)."""
    ds = _dataset()
    train(_cfg(tmp_path, "ref"), ds)
    cut = build_trainer(_cfg(tmp_path, "cut"), ds)
    signal_at(cut, 1, 1, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    assert read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["partial"] is not None
    resume(str(tmp_path / "cut"), dataset=ds)
    a, b = _memory(tmp_path / "ref"), _memory(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    wa = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _scripted(monkeypatch, pgd, fgsm):
    """Scripted probe values; returns the list of the models the probes measured."""
    models = []
    scripted_probes(monkeypatch, pgd, fgsm, models=models)
    return models


def test_per_example_state_is_rewound_by_a_rollback(tmp_path, monkeypatch):
    """A rollback at epoch 3 back to epoch 1's best probe, then 3 more epochs (5 in all):
    the counts say 5 (the run's own trajectory), not 7 (had the memory of the two discarded
    epochs been kept)."""
    _scripted(monkeypatch, [0.25, 0.5, 0.125, 0.125, 0.5, 0.5, 0.5],
              [0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5])
    res = train(_cfg(tmp_path, "rb", epochs=5, probe_n=8, on_co="rollback"), _dataset())
    assert len(res["monitor"]["rollbacks"]) == 1
    assert res["monitor"]["rollbacks"][0]["restored_from"]["epoch"] == 1
    mem = _memory(tmp_path / "rb")
    assert mem["seen"].tolist() == [5] * 50 and mem["epoch"].tolist() == [4] * 50


class Perturb(Method):
    """A toy method that perturbs every weight by ``shift`` inside its step (SAM-like with
    ``restore``; left in the weights without, as LAP's official code does)."""

    name = "toy-perturb"

    def __init__(self, eps, shift=0.01, restore=True, norm="linf"):
        super().__init__(eps, norm)
        self.shift, self.restore = shift, restore

    def cost(self):
        return Cost(1, 1)

    def hparams(self):
        return {"eps": self.eps, "shift": self.shift, "restore": self.restore}

    def step(self, model, x, y, ctx):
        ctx.weights.perturb({n: torch.full_like(p, self.shift) for n, p in ctx.weights.named()},
                            restore=self.restore)
        z = model(x)
        return StepOutput(F.cross_entropy(z, y), z.detach())


@pytest.mark.parametrize("restore", [True, False])
def test_the_optimiser_sees_the_unperturbed_weights(tmp_path, restore):
    """One SGD step (momentum and weight decay 0): w' = w - lr * g(w + s) with the
    perturbation put back (restore), w' = (w + s) - lr * g(w + s) without. The gradient is
    computed by hand on a copy; a loop that stepped from the perturbed weights (or took
    the gradient at the unperturbed ones) fails the first case."""
    ds = _dataset(n_train=16)
    t = build_trainer(_cfg(tmp_path, str(restore), method="toy-perturb", epochs=1,
                           momentum=0.0, weight_decay=0.0, lr_schedule="multistep",
                           method_hparams={"shift": 0.01, "restore": restore}), ds)
    x, y, index = next(iter(t.loader.indexed()))
    net = t.model.net
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    probe = copy.deepcopy(t.model)
    with torch.no_grad():
        for p in probe.net.parameters():
            p.add_(0.01)
    probe.train()
    loss = F.cross_entropy(probe(x), y)
    grads = dict(zip([n for n, _ in probe.net.named_parameters()],
                     torch.autograd.grad(loss, list(probe.net.parameters()))))
    lr = t.opt.param_groups[0]["lr"]
    t.train_step(x, y, t.context(0, 0, index))
    for n, p in net.named_parameters():
        start = before[n] if restore else before[n] + 0.01
        assert torch.allclose(p, start - lr * grads[n], rtol=0, atol=1e-7), n
    assert not t.weights.perturbed
    t.close()


class Teacher(Method):
    """A toy method whose step reads the engine's averaged model (a consistency term)."""

    name = "toy-teacher"
    uses_averaged_model = True

    def cost(self):
        return Cost(2, 1)

    def step(self, model, x, y, ctx):
        with torch.no_grad():
            target = ctx.averaged(x).softmax(1)
        z = model(x)
        loss = F.cross_entropy(z, y) + F.mse_loss(z.softmax(1), target)
        return StepOutput(loss, z.detach())


def test_the_averaged_model_is_a_hand_computed_ema(tmp_path):
    """tau 0.9: the average starts at the weights after the first optimiser step and then
    moves as avg = tau * avg + (1 - tau) * w after each step, BatchNorm statistics
    included; the integer step counter is copied (the FastAT Benchmark's EMA). Checked
    against the weights recorded after each of the run's steps."""
    ds = _dataset(n_train=48)
    t = build_trainer(_cfg(tmp_path, "ema", method="rs-fgsm", epochs=1, weight_average=0.9),
                      ds)
    seen = []
    orig = t.train_step

    def train_step(x, y, ctx):
        out = orig(x, y, ctx)
        seen.append({k: v.detach().clone() for k, v in t.model.state_dict().items()})
        return out

    t.train_step = train_step
    res = t.fit()
    assert len(seen) == 3 and res["evaluated_model"] == "averaged"
    avg = t.averaged.model.state_dict()
    for k, v in avg.items():
        if not v.is_floating_point():
            assert torch.equal(v, seen[-1][k]), k
            continue
        ema = seen[0][k].double()
        for w in seen[1:]:
            ema = 0.9 * ema + 0.1 * w[k].double()
        assert torch.allclose(v.double(), ema, rtol=1e-6, atol=1e-7), k
    # model.pt holds the averaged network, as results.json says
    saved = torch.load(tmp_path / "ema" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], t.averaged.model.net.state_dict()[k]) for k in saved)
    assert json.loads((tmp_path / "ema" / "results.json").read_text())["evaluated_model"] == \
        "averaged"


def test_the_probe_and_the_last_choice_use_the_named_model(tmp_path, monkeypatch):
    """--eval-model last with weight averaging on: the probe measures the live model and
    model.pt holds its weights; with averaged, the probe measures the average."""
    ds = _dataset(n_train=32)
    calls = _scripted(monkeypatch, [0.5, 0.5], [0.5, 0.5])
    t = build_trainer(_cfg(tmp_path, "last", method="rs-fgsm", epochs=1, weight_average=0.9,
                           eval_model="last", probe_n=4), ds)
    t.fit()
    assert calls[0] is t.model
    saved = torch.load(tmp_path / "last" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], t.model.net.state_dict()[k]) for k in saved)
    t2 = build_trainer(_cfg(tmp_path, "avg", method="rs-fgsm", epochs=1, weight_average=0.9,
                            probe_n=4), ds)
    t2.fit()
    assert calls[1] is t2.averaged.model


def test_a_method_reading_the_average_trains_and_resumes_bitwise(tmp_path):
    """The averaged model is part of the exact-resume state: a run stopped mid-epoch and
    resumed equals the uninterrupted one, averaged weights included."""
    ds = _dataset(n_train=48)
    cfg = lambda name: _cfg(tmp_path, name, method="toy-teacher", epochs=2, weight_average=0.8)
    train(cfg("ref"), ds)
    cut = build_trainer(cfg("cut"), ds)
    signal_at(cut, 1, 0, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    resume(str(tmp_path / "cut"), dataset=ds)
    for f in ("model.pt",):
        a = torch.load(tmp_path / "ref" / f, weights_only=True)
        b = torch.load(tmp_path / "cut" / f, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ca = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))["averaged"]["model"]
    cb = read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["averaged"]["model"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_averaged_model_settings_are_checked(tmp_path):
    from aaer.errors import UsageError
    with pytest.raises(UsageError, match="--weight-average"):
        _cfg(tmp_path, "x", method="toy-teacher").resolve(custom_data=True)
    with pytest.raises(UsageError, match="--eval-model averaged needs"):
        _cfg(tmp_path, "x", method="rs-fgsm", eval_model="averaged").resolve(custom_data=True)
    r = _cfg(tmp_path, "x", method="rs-fgsm", weight_average=0.99).resolve(custom_data=True)
    assert r.evaluation.model == "averaged"
    assert r.sources["evaluation.model"] == "--weight-average is on"


def test_pgd_at_rollback_shrinks_the_fixed_step_in_use():
    """PGD-AT with the fixed step 2/255 (preset pgd10): a rollback's step change scales
    step255, the step the attack uses (scaling alpha would change nothing)."""
    from aaer.methods import create_method
    m = create_method("pgd", 8 / 255, steps=10, step255=2.0)
    change = m.strengthen("step", {"step": 0.75})
    assert change["param"] == "step255" and m.step_size == pytest.approx(1.5 / 255)
    plain = create_method("pgd", 8 / 255)
    plain.strengthen("step", {"step": 0.75})
    assert plain.step_size == pytest.approx(0.75 * 0.25 * 8 / 255)
