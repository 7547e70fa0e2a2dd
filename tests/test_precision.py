"""Mixed precision, channels_last, --compile fallback, and a step free of host syncs."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from aaer.data import Dataset
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.base import Cost, forward_with_input_grad, uniform_noise
from aaer.models import build
from aaer.engine.precision import Precision, maybe_compile, use_channels_last
from aaer.training import TrainConfig, build_trainer
from tests.helpers.tiny import TinyNet

EPS = 8 / 255


def random_dataset(n=32, n_test=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset("cifar10", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g),
                   torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n_test,), generator=g),
                   [f"c{i}" for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def make_trainer(tmp_path, method="rs-aaer", model="small-cnn", **kw):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=model, method=method,
                      epochs=1, batch_size=16, eval_protocol=None, progress=False,
                      device="cpu", **kw)
    return build_trainer(cfg, random_dataset())


def batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_precision_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"invalid --precision 'fp8'.*fp32, bf16, fp16"):
        Precision("fp8", "cpu")
    with pytest.raises(ValueError, match="--channels-last"):
        TrainConfig(channels_last="yes").validate()
    assert Precision("fp32", "cpu").scaler is None and Precision("bf16", "cpu").scaler is None
    assert Precision("fp16", "cpu").scaler is not None


def test_bf16_runs_the_network_in_bf16_but_compares_and_regularises_in_fp32():
    torch.manual_seed(0)
    model = TinyNet(freq=100.0)           # curved input map: many AAEs, regulariser active
    x, y = batch()
    method = create_method("rs-aaer", EPS)
    ctx = StepContext()
    with Precision("bf16", "cpu").autocast():
        torch.manual_seed(1)
        z0, l0, z1, l1, _ = method.attack(model, x, y, ctx)
        torch.manual_seed(1)
        out = method.step(model, x, y, ctx)
    assert z0.dtype == z1.dtype == torch.bfloat16          # the network ran in bf16
    assert l0.dtype == l1.dtype == torch.float32           # CE of z.float()
    assert out.loss.dtype == torch.float32
    m = int((l0 > l1).sum())                               # the AAE test on fp32 losses
    assert 0 < m < 16 and int(out.stats["aae_count"]) == m
    assert out.stats["aaer_reg_sum"].dtype == torch.float32 and float(out.stats["aaer_reg_sum"]) > 0

    torch.manual_seed(1)
    ref = method.step(model, x, y, ctx)                    # the same step in fp32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.03)


def test_fp16_input_gradient_does_not_underflow():
    # tiny weights and a batch of 256: per-pixel gradients of the batch-mean CE are ~1e-7,
    # at fp16's smallest subnormal (6e-8); differentiating the sum keeps their signs
    torch.manual_seed(0)
    model = build("linear", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
    with torch.no_grad():
        model.net.fc.weight.mul_(1e-3)
    x, y = batch(n=256)
    _, _, g32 = forward_with_input_grad(model, x, y)
    with Precision("fp16", "cpu").autocast():
        _, _, g16 = forward_with_input_grad(model, x, y)
        xi = x.clone().requires_grad_(True)                # what a plain mean would give
        (naive,) = torch.autograd.grad(F.cross_entropy(model(xi).float(), y), xi)
    assert (naive.sign() == g32.sign()).float().mean() < 0.7   # premise: the mean underflows
    agree = (g16.sign() == g32.sign()).float().mean()
    assert agree > 0.99 and (g16 == 0).float().mean() < 0.01


def test_fp16_training_uses_the_grad_scaler_and_stays_finite(tmp_path):
    tr = make_trainer(tmp_path, precision="fp16", model="linear")
    res = tr.fit()
    assert tr.prec.scaler is not None and tr.prec.scaler.get_scale() > 0
    row = res["final_epoch"]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and row["n"] == 32
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert "scale" in state["precision"]["scaler"]


def test_bf16_short_run_writes_its_settings(tmp_path):
    tr = make_trainer(tmp_path, precision="bf16", model="linear")
    res = tr.fit()
    import json
    perf = json.loads((tmp_path / "run" / "config.json").read_text())["performance"]
    assert perf == {"precision": "bf16", "channels_last": False, "compile": False,
                    "compile_mode": None, "sgd_impl": "auto",
                    "data_on_device": True, "world_size": 1, "backend": None,
                    "batch_per_process": 16}
    assert 0 < res["final_epoch"]["train_loss"] < 10


def test_channels_last_choice():
    conv = build("small-cnn", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
    lin = build("linear", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_channels_last("auto", conv, cuda) and not use_channels_last("auto", lin, cuda)
    assert not use_channels_last("auto", conv, cpu)
    assert use_channels_last("on", lin, cpu) and not use_channels_last("off", conv, cuda)
    with pytest.raises(ValueError, match="valid: auto, on, off"):
        use_channels_last("nhwc", conv, cpu)


def test_channels_last_step_matches_the_contiguous_step(tmp_path):
    losses, grads, inputs, noises = [], [], [], []
    x, y = batch()
    for setting in ("off", "on"):
        tr = make_trainer(tmp_path / setting, channels_last=setting)
        conv1 = tr.model.net.conv1.weight
        assert conv1.is_contiguous(memory_format=torch.channels_last) == (setting == "on")
        xs = x.contiguous(memory_format=torch.channels_last) if setting == "on" else x
        inputs.append(forward_with_input_grad(tr.model, xs, y))
        torch.manual_seed(3)
        noise = uniform_noise(xs, EPS)       # drawn in NCHW order in either format
        assert noise.is_contiguous(memory_format=torch.channels_last) == (setting == "on")
        noises.append(noise)
        torch.manual_seed(3)
        out = tr.train_step(x, y, StepContext())
        losses.append(out.loss.item())
        grads.append(tr.model.net.fc.weight.grad.clone())
    assert torch.equal(noises[0], noises[1])
    (z_a, l_a, g_a), (z_b, l_b, g_b) = inputs
    assert torch.allclose(z_a, z_b, atol=1e-5) and torch.allclose(l_a, l_b, atol=1e-5)
    assert (g_a.sign() == g_b.sign()).float().mean() > 0.999   # ties at ~0 may flip
    # one full step: a few flipped signs move x_adv by 2 eps on those pixels, no more
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-4)


class DoubleBackprop(METHODS["rs-fgsm"]):
    name = "double-backprop-test"

    def cost(self):
        return Cost(forward=2, backward=3, double_backprop=True)


def test_compile_falls_back_to_eager_for_double_backprop(caplog):
    model = build("small-cnn", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
    log = logging.getLogger("aaer.test.compile")
    with caplog.at_level(logging.INFO, logger="aaer.test.compile"):
        same = maybe_compile(model, DoubleBackprop(EPS), log)
        compiled = maybe_compile(model, create_method("rs-aaer", EPS), log)
    assert same is model
    assert "double backprop" in caplog.text and "running it eagerly" in caplog.text
    assert compiled is not model and compiled._orig_mod is model   # torch.compile's wrapper


def test_compile_flag_reaches_the_trainer(tmp_path):
    from aaer.cli import build_parser
    args = build_parser().parse_args(["train", "--compile", "--channels-last", "off"])
    assert args.compile is True and args.channels_last == "off"
    tr = make_trainer(tmp_path, compile=True)
    assert tr.compiled and tr.step_model._orig_mod is tr.model and tr.model.training
    assert tr.built()["performance"]["compile"] is True


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero",
         "cpu", "numpy")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_train_step_never_reads_a_tensor_on_the_host(tmp_path, monkeypatch, method, precision):
    """Every Python-level way to read a tensor's value (the host syncs of the reference
    loop: .item(), bool()/float() of a tensor, boolean indexing via nonzero) is a trap."""
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model="small-cnn", method=method,
                      epochs=1, batch_size=16, eval_protocol=None, progress=False,
                      device="cpu", precision=precision)
    tr = build_trainer(cfg, random_dataset())
    x, y = batch()
    before = copy.deepcopy(tr.model.state_dict())

    def trap(name):
        def f(self, *a, **k):
            raise AssertionError(f"host sync: Tensor.{name} called inside train_step")
        return f

    with monkeypatch.context() as mp:
        for name in SYNCS:
            mp.setattr(torch.Tensor, name, trap(name))
        out = tr.train_step(x, y, tr.context(0, 0, torch.arange(y.shape[0])))
    assert torch.isfinite(out.loss).item()
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_train_evaluates_under_the_eval_precision_it_records(tmp_path):
    from aaer.cli import build_parser, config_from_args
    from aaer.evaluation import evaluate, get_protocol
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model="small-cnn", method="rs-fgsm",
                      epochs=1, batch_size=16, eval_protocol="quick", n_eval=8,
                      eval_precision="bf16", progress=False, device="cpu")
    tr = build_trainer(cfg, random_dataset())
    res = tr.fit()
    ev = res["evaluation"]
    assert ev["precision"] == "bf16"
    assert {r["precision"] for r in ev["results"].values()} == {"bf16"}
    again = evaluate(tr.model, tr.dataset.test_x, tr.dataset.test_y, cfg.eps,
                     get_protocol("quick", n_eval=8), precision="bf16", seed=cfg.seed)
    fp32 = evaluate(tr.model, tr.dataset.test_x, tr.dataset.test_y, cfg.eps,
                    get_protocol("quick", n_eval=8), seed=cfg.seed)
    for attack in ("clean", "pgd"):
        assert again["results"][attack]["loss"] == ev["results"][attack]["loss"]
    assert fp32["results"]["clean"]["loss"] != ev["results"]["clean"]["loss"]   # bf16 ran
    # no AutoAttack state left behind by a protocol without AutoAttack
    assert not list((tmp_path / "run").glob("autoattack_state_*"))
    args = build_parser().parse_args(["train", "--eval-precision", "fp16"])
    assert config_from_args(args).eval_precision == "fp16"
    assert config_from_args(build_parser().parse_args(["train"])).eval_batch_size is None
    with pytest.raises(ValueError, match="invalid --eval-precision 'fp64'"):
        TrainConfig(eval_precision="fp64").validate()
