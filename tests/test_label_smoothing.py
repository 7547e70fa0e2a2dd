"""--label-smoothing S: every cross-entropy on the true labels inside a method's step (its
attack's loss, a regulariser's, its training loss) is PyTorch's label-smoothed CE,

    l_S(z, y) = (1 - S) CE(z, y) + S mean_k(-log softmax(z)_k)   (target (1 - S) one-hot + S/K),

checked against that closed form, against the closed-form input and weight gradients of a
bias-free linear model, through the engine for every method, end to end, across a resume,
and refused for the methods that smooth their labels themselves.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.aaer import aaer_regularizer
from aaer.methods.base import clip_to_box, forward_with_input_grad, uniform_noise
from aaer.runs import read_checkpoint
from aaer.training import TrainConfig, build_trainer, train
from tests.helpers.linear import Linear, batch
from tests.helpers.tiny import TinyNet, same_state, stopped_and_resumed, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
OWN = [n for n, cls in METHODS.items() if cls.own_label_smoothing]
SMOOTHABLE = [n for n in METHODS if n not in OWN]


def smoothed_ce(z, y, s):
    """(1 - s) CE + s mean_k(-log p_k), per example, from a hand-written log-softmax."""
    z = z.double()
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    return -(1 - s) * logp.gather(1, y.view(-1, 1)).squeeze(1) - s * logp.mean(dim=1)


def smoothed_target(y, k, s):
    """t = (1 - s) one-hot + s / K."""
    return (1 - s) * F.one_hot(y, k).double() + s / k


def linear_input_grad(w, x, y, s):
    """grad_x of mean_i l_s(W x_i, y_i): row i is W^T (softmax(W x_i) - t_i) / B."""
    z = x.flatten(1).double() @ w.double().T
    g = (torch.softmax(z, dim=1) - smoothed_target(y, w.shape[0], s)) @ w.double()
    return (g / x.shape[0]).view_as(x)


# -- the loss: PyTorch's definition, and S = 0 is plain CE bit for bit ----------------------

@pytest.mark.parametrize("s", [0.1, 0.4, 0.9])
def test_ce_is_the_closed_form_and_not_a_factor_target(s):
    """Method.ce and forward_with_input_grad's loss equal (1-S) CE + S mean_k(-log p_k).
    Rules out the "factor" form (S spread over the K-1 other classes, FGSM-PGI's targets):
    its true-class target 1-S differs from 1-S+S/K, and so does its loss."""
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (16,), generator=g)
    m = create_method("fgsm", EPS)
    m.set_label_smoothing(s)
    want = smoothed_ce(z, y, s)
    assert torch.allclose(m.ce(z, y, "none"), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(m.ce(z, y), want.mean(), rtol=1e-12)
    assert torch.allclose(m.ce(z, y, "sum"), want.sum(), rtol=1e-12)
    logp = torch.log_softmax(z, dim=1)
    factor = -((1 - s) * logp.gather(1, y.view(-1, 1)).squeeze(1)
               + s / 4 * (logp.sum(1) - logp.gather(1, y.view(-1, 1)).squeeze(1)))
    assert (factor - want).abs().max() > 1e-3
    model = torch.nn.Identity()
    _, l, _ = forward_with_input_grad(model, z.float(), y, smoothing=s)
    assert torch.allclose(l.double(), want, rtol=1e-5, atol=1e-6)


def test_zero_smoothing_is_plain_cross_entropy_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    z = 4 * torch.randn(32, 10, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    m = create_method("pgd", EPS)
    assert m.smoothing == 0.0
    for reduction in ("none", "mean", "sum"):
        assert torch.equal(m.ce(z, y, reduction), F.cross_entropy(z, y, reduction=reduction))
    net = Linear(k=10)
    x, _ = batch(n=32, k=10)
    x.requires_grad_(True)
    (ref,) = torch.autograd.grad(F.cross_entropy(net(x), y), x)
    _, l, grad = forward_with_input_grad(net, x, y)
    assert torch.equal(grad, ref)
    assert torch.equal(l, F.cross_entropy(net(x), y, reduction="none").detach())


# -- the attack and the training loss: closed forms on a bias-free linear model -------------

def test_fgsm_attack_and_training_loss_are_both_smoothed_closed_form():
    """FGSM (zero start, step eps) on z = W x: the attack's input gradient is W^T (p - t)/B
    with the smoothed target t, the adversarial example is x + eps sign of it, and the
    training loss and its weight gradient are the smoothed ones at that example. Rules out
    smoothing only the training loss (the attack's gradient would be the one-hot target's,
    whose sign differs here) and smoothing only the attack (the loss would be plain CE)."""
    s, k = 0.4, 3
    torch.manual_seed(0)
    net = Linear(k=k)
    x, y = batch(n=6, k=k)
    m = create_method("fgsm", EPS)
    m.set_label_smoothing(s)
    w = net.fc.weight.detach()
    want_g = linear_input_grad(w, x, y, s)
    plain_g = linear_input_grad(w, x, y, 0.0)
    assert (want_g.sign() != plain_g.sign()).any()          # the two rules' attacks differ
    _, l0, z1, l1, grad = m.attack(net, x, y, StepContext())
    assert torch.allclose(grad.double(), want_g, rtol=1e-4, atol=1e-9)
    assert torch.allclose(l0.double(), smoothed_ce(net(x), y, s), rtol=1e-6)
    x_adv = (x + EPS * want_g.sign().float()).clamp(0, 1)
    assert torch.allclose(z1, net(x_adv), atol=1e-6)
    assert torch.allclose(l1.double(), smoothed_ce(net(x_adv), y, s), rtol=1e-6)
    out = m.step(net, x, y, StepContext())
    assert torch.allclose(out.loss.double(), smoothed_ce(net(x_adv), y, s).mean(), rtol=1e-6)
    net.zero_grad()
    out.loss.backward()
    p1 = torch.softmax(net(x_adv).double(), dim=1)
    want_w = (p1 - smoothed_target(y, k, s)).T @ x_adv.flatten(1).double() / x.shape[0]
    assert torch.allclose(net.fc.weight.grad.double(), want_w, rtol=1e-5, atol=1e-8)


def test_fp16_logits_differentiate_the_smoothed_sum_then_divide():
    """Under fp16 logits forward_with_input_grad differentiates the sum and divides by B;
    the smoothing must reach that branch too: W^T (p - t) / B at the fp16 logits."""
    s, k = 0.4, 4
    torch.manual_seed(1)
    lin = Linear(k=k)

    class Half(torch.nn.Module):
        def forward(self, x):
            return lin(x).half()

    x, y = batch(n=8, k=k)
    z, l, grad = forward_with_input_grad(Half(), x, y, smoothing=s)
    assert z.dtype == torch.float16
    p = torch.softmax(z.double(), dim=1)
    want = ((p - smoothed_target(y, k, s)) @ lin.fc.weight.double() / 8).view_as(x)
    assert torch.allclose(grad.double(), want, rtol=2e-2, atol=1e-6)
    assert torch.allclose(l.double(), smoothed_ce(z, y, s), rtol=1e-5)


def test_aaer_abnormal_test_and_ce_variation_use_the_smoothed_losses():
    """N-AAER with S: the AAE mask is l0_S > l1_S and the loss is mean l1_S plus the AAER
    term of the smoothed losses, all recomputed here from the closed form. On this curved
    net the plain-CE mask differs (the precondition), so an AAE test or CEvar left on plain
    CE fails."""
    s, eps = 0.4, 16 / 255
    torch.manual_seed(4)
    net = TinyNet(width=8, freq=40.0).eval()
    x = torch.rand(32, 3, 16, 16)
    y = torch.randint(0, 10, (32,))
    m = create_method("n-aaer", eps)
    m.set_label_smoothing(s)
    torch.manual_seed(7)
    out = m.step(net, x, y, StepContext())
    torch.manual_seed(7)
    eta = clip_to_box(x, uniform_noise(x, 2 * eps))
    x0 = (x + eta).requires_grad_(True)
    z0 = net(x0)
    l0 = smoothed_ce(z0, y, s)
    (grad,) = torch.autograd.grad(l0.mean(), x0)
    z1 = net((x + eta + eps * grad.sign()).clamp(0, 1))
    l1 = smoothed_ce(z1, y, s)
    plain0, plain1 = F.cross_entropy(z0, y, reduction="none"), F.cross_entropy(z1, y,
                                                                               reduction="none")
    mask = l0 > l1
    assert 0 < int(mask.sum()) < 32 and not torch.equal(mask, plain0 > plain1)
    assert int(out.stats["aae_count"]) == int(mask.sum())
    reg, _ = aaer_regularizer(z0, z1, l0, l1, m.lamda1, m.lamda2, m.lamda3)
    assert torch.allclose(out.loss.double(), (l1.mean() + reg).detach(), rtol=1e-5)


# -- every method: every CE of its step carries the run's S ---------------------------------

# cross-entropies per train_step: attack + training (2), + a regulariser's (GradAlign's
# second gradient, ELLE's triplet losses: 3), PGD's steps + 1, Free-AT one per replay
CE_CALLS = {"gradalign": 3, "elle": 3, "elle-a": 3, "pgd": 3, "free": 2}
LIGHTER = {"pgd": {"steps": 2}, "free": {"replays": 2}}


def test_the_partition_of_methods_is_the_intended_one():
    assert set(OWN) == {"fgsm-pgi", "fgsm-mep-cs", "fgsm-rs-cs", "fgsm-pco", "fgsm-uap",
                        "fgsm-cuap", "fgsm-fuap", "liet"}


# every Python-level way to read a tensor's value on the host (as tests/test_precision.py)
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero",
         "cpu", "numpy")


@pytest.mark.parametrize("name", SMOOTHABLE)
def test_every_cross_entropy_of_a_step_is_smoothed(name, tmp_path, monkeypatch):
    """Through the engine (the trainer sets S on the method): each F.cross_entropy the
    method's step computes carries label_smoothing 0.4, and there are as many as the method
    has losses (a CE left plain, or one missing, fails); the smoothed step still never
    reads a tensor on the host."""
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model="small-cnn", method=name,
                      method_hparams=LIGHTER.get(name, {}), epochs=1, batch_size=8,
                      eval_protocol=None, progress=False, device="cpu", label_smoothing=0.4)
    tr = build_trainer(cfg, tiny_dataset(16, 4, size=8, classes=4))
    assert tr.method.smoothing == 0.4
    seen = []
    real = F.cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing", 0.0))
        return real(*args, **kwargs)

    def trap(sync):
        def f(self, *a, **k):
            raise AssertionError(f"host sync: Tensor.{sync} called inside train_step")
        return f

    x, y = tr.train_x[:8].float() / 255, tr.train_y[:8]
    with monkeypatch.context() as mp:
        mp.setattr(F, "cross_entropy", spy)
        for sync in SYNCS:
            mp.setattr(torch.Tensor, sync, trap(sync))
        out = tr.train_step(x, y, tr.context(0, 0, torch.arange(8)))
    assert torch.isfinite(out.loss)
    assert seen == [0.4] * CE_CALLS.get(name, 2)


# -- the setting: end to end, S = 0, a resume, the refusal -----------------------------------

def _cfg(out, method="n-aaer", **kw):
    settings = dict(model="small-cnn", epsilon=8.0, epochs=2, batch_size=8, lr_max=0.05,
                    device="cpu", eval_protocol=None, progress=False, seed=1)
    return TrainConfig(out_dir=str(out), method=method, **{**settings, **kw})


def _weights(run):
    return read_checkpoint(str(run / "checkpoint.pt"))["model"]


def test_a_smoothed_run_trains_and_records_the_setting(tmp_path):
    from aaer.cli import build_parser, config_from_args
    ns = build_parser().parse_args(["train", "--label-smoothing", "0.4", "--out-dir", "x"])
    assert config_from_args(ns).label_smoothing == 0.4
    ds = tiny_dataset(n_train=32, n_test=8, size=8, classes=4, learnable=True)
    train(_cfg(tmp_path / "s", label_smoothing=0.4), ds)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["settings"]["optim"]["label_smoothing"] == 0.4
    assert config["sources"]["optim.label_smoothing"] == "explicit"
    assert "label smoothing 0.4" in (tmp_path / "s" / "train.log").read_text()
    rows = [json.loads(r) for r in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    train(_cfg(tmp_path / "zero", label_smoothing=0.0), ds)
    train(_cfg(tmp_path / "plain"), ds)
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert plain["settings"]["optim"]["label_smoothing"] == 0.0
    assert plain["sources"]["optim.label_smoothing"] == "default"
    a, b, c = _weights(tmp_path / "zero"), _weights(tmp_path / "plain"), _weights(tmp_path / "s")
    assert same_state(a, b)                         # S = 0: the unsmoothed run, bit for bit
    assert not same_state(c, b)


def test_an_older_run_without_the_setting_reads_back_unsmoothed(tmp_path):
    from aaer.runs import RunDir
    ds = tiny_dataset(n_train=16, n_test=8, size=8, classes=4)
    train(_cfg(tmp_path / "old", epochs=1), ds)
    path = tmp_path / "old" / "config.json"
    raw = json.loads(path.read_text())
    del raw["settings"]["optim"]["label_smoothing"]
    del raw["sources"]["optim.label_smoothing"]
    path.write_text(json.dumps(raw))
    cfg = RunDir(str(tmp_path / "old")).settings(custom_data=True)
    assert cfg.optim.label_smoothing == 0.0
    assert cfg.sources["optim.label_smoothing"].kind == "older-run"


@pytest.mark.parametrize("name", ["n-aaer", "free", "gat"])
def test_a_smoothed_run_resumes_bitwise_mid_epoch(name, tmp_path):
    """Stopped by SIGTERM inside its last epoch and resumed, a run with S = 0.4 ends with
    the weights and method state of the uninterrupted run: the resumed trainer smooths too."""
    ds = tiny_dataset(n_train=32, n_test=8, size=8, classes=4, learnable=True)
    hp = LIGHTER.get(name, {})
    train(_cfg(tmp_path / "ref", name, method_hparams=hp, label_smoothing=0.4), ds)
    b = stopped_and_resumed(_cfg(tmp_path / "cut", name, method_hparams=hp,
                                 label_smoothing=0.4), ds)
    a = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))
    for part in ("model", "method", "memory", "averaged"):
        assert same_state(a.get(part), b.get(part)), part
    unsmoothed = tmp_path / "plain"
    train(_cfg(unsmoothed, name, method_hparams=hp), ds)
    assert not same_state(_weights(unsmoothed), a["model"])


@pytest.mark.parametrize("name", OWN)
def test_methods_that_smooth_their_labels_refuse_the_setting(name, tmp_path):
    key = METHODS[name].own_label_smoothing
    with pytest.raises(UsageError) as e:
        _cfg(tmp_path / "x", name, label_smoothing=0.4).resolve(custom_data=True)
    msg = str(e.value)
    value = getattr(create_method(name, EPS), key)
    assert "\n" not in msg
    assert f"--method {name} smooths its labels itself ({key} {value:g})" in msg
    assert f"--set {key}=" in msg and "not --label-smoothing" in msg
    assert _cfg(tmp_path / "y", name, label_smoothing=0.0).resolve(custom_data=True)


def test_the_refusal_is_a_usage_error_at_the_command_line(tmp_path, capsys):
    from aaer.cli import main
    code = main(["train", "--method", "fgsm-pgi", "--label-smoothing", "0.4", "--out-dir",
                 str(tmp_path / "x"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--method fgsm-pgi smooths its labels itself (factor 0.6); set it with " \
           "--set factor=..., not --label-smoothing" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), float("inf")])
def test_bad_values_are_refused_naming_the_flag(bad, tmp_path):
    with pytest.raises(UsageError) as e:
        _cfg(tmp_path / "x", label_smoothing=bad).resolve(custom_data=True)
    assert "--label-smoothing" in str(e.value) and "[0, 1)" in str(e.value)
    m = create_method("fgsm", EPS)
    with pytest.raises(UsageError):
        m.set_label_smoothing(bad)
