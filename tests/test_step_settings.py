"""The lighter-step settings: --sgd-impl (the same update whichever implementation) and
--compile-mode (reduce-overhead: CUDA graphs, refused on a CPU run before anything is
written), each checked once and recorded in config.json."""
import json

import pytest
import torch

from aaer.engine.precision import check_compile_mode, make_sgd
from aaer.errors import UsageError
from aaer.methods import StepContext
from aaer.data import Dataset
from aaer.training import TrainConfig, build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def make_trainer(tmp_path, model="small-cnn", **kw):
    g = torch.Generator().manual_seed(0)
    data = Dataset("cifar10", torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8,
                                            generator=g),
                   torch.randint(0, 10, (32,), generator=g),
                   torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (8,), generator=g),
                   [f"c{i}" for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=model, method="rs-aaer", epochs=1,
                      batch_size=16, eval_protocol=None, progress=False, device="cpu", **kw)
    return build_trainer(cfg, data)


def batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_sgd_implementations_train_the_same_weights(tmp_path):
    states = {}
    for impl in ("for-loop", "foreach", "fused", "auto"):
        tr = make_trainer(tmp_path / impl, sgd_impl=impl, model="small-cnn")
        want = {"for-loop": (False, None), "foreach": (True, None), "fused": (None, True),
                "auto": (None, None)}[impl]
        assert (tr.opt.defaults["foreach"], tr.opt.defaults["fused"]) == want
        for step in range(4):
            x, y = batch(seed=step)
            torch.manual_seed(10 + step)
            tr.train_step(x, y, StepContext())
        states[impl] = {k: v.clone() for k, v in tr.model.state_dict().items()}
        # the momentum buffers too: the implementations keep the same optimiser state
        states[impl]["momentum"] = torch.cat([tr.opt.state[p]["momentum_buffer"].flatten()
                                              for p in tr.model.parameters()])
    ref = states["for-loop"]
    moved = [k for k in ref if k != "momentum" and ref[k].is_floating_point()
             and not torch.equal(ref[k], make_trainer(tmp_path / "init").model.state_dict()[k])]
    assert moved, "the steps changed no weight: the comparison would prove nothing"
    for impl in ("foreach", "fused", "auto"):
        for k, v in ref.items():
            assert torch.allclose(states[impl][k], v, rtol=1e-5, atol=1e-6), (impl, k)


def test_sgd_impl_is_checked_and_an_unavailable_one_is_refused(monkeypatch):
    with pytest.raises(UsageError, match=r"invalid --sgd-impl 'fast'.*auto, for-loop, foreach, "
                                         r"fused"):
        TrainConfig(sgd_impl="fast").validate()

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               "Tensors of supported devices")
        return torch.optim.Optimizer.__new__(torch.optim.SGD)
    monkeypatch.setattr(torch.optim, "SGD", no_fused)
    with pytest.raises(UsageError, match=r"--sgd-impl fused is not available here.*valid: "
                                         r"auto, for-loop, foreach"):
        make_sgd([torch.zeros(2, requires_grad=True)], "fused", lr=0.1)


def test_reduce_overhead_needs_cuda_and_compile(tmp_path):
    assert check_compile_mode("reduce-overhead", "cuda") == "reduce-overhead"
    assert check_compile_mode("default", "cpu") == "default"
    with pytest.raises(UsageError, match=r"--compile-mode reduce-overhead captures CUDA graphs "
                                         r"and needs a CUDA device, but this run is on cpu"):
        make_trainer(tmp_path, compile=True, compile_mode="reduce-overhead")
    assert not (tmp_path / "run").exists()            # refused before anything is written
    with pytest.raises(UsageError, match=r"--compile-mode reduce-overhead is a mode of "
                                         r"torch.compile: give --compile too"):
        TrainConfig(compile_mode="reduce-overhead").validate()
    with pytest.raises(UsageError, match=r"invalid --compile-mode 'max'.*default, "
                                         r"reduce-overhead"):
        TrainConfig(compile=True, compile_mode="max").validate()


def test_the_settings_are_flags_and_are_recorded(tmp_path):
    from aaer.cli import build_parser
    a = build_parser().parse_args(["train", "--compile", "--compile-mode", "reduce-overhead",
                                   "--sgd-impl", "fused"])
    assert (a.compile, a.compile_mode, a.sgd_impl) == (True, "reduce-overhead", "fused")
    tr = make_trainer(tmp_path, sgd_impl="foreach", model="linear")
    tr.fit()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    runtime = cfg["settings"]["runtime"]
    assert (runtime["sgd_impl"], runtime["compile_mode"]) == ("foreach", "default")
    assert cfg["performance"]["sgd_impl"] == "foreach"
    assert cfg["performance"]["compile_mode"] is None          # not compiled


def test_a_run_written_before_these_settings_reads_as_what_aaer_did(tmp_path):
    """config.json of a run from before --compile-mode and --sgd-impl existed: eager
    compile mode (torch.compile's default) and torch's own SGD, as aaer did then."""
    from aaer.runs import load_run
    tr = make_trainer(tmp_path, model="linear")
    tr.fit()
    path = tmp_path / "run" / "config.json"
    cfg = json.loads(path.read_text())
    for name in ("compile_mode", "sgd_impl"):
        del cfg["settings"]["runtime"][name]
        cfg["sources"].pop(f"runtime.{name}", None)
        cfg.get("source_kinds", {}).pop(f"runtime.{name}", None)
    path.write_text(json.dumps(cfg))
    run = load_run(str(tmp_path / "run"), need_epochs=False)
    assert (run.settings.runtime.compile_mode, run.settings.runtime.sgd_impl) == \
        ("default", "auto")
    assert "written before the setting existed" in run.settings.sources["runtime.sgd_impl"]
