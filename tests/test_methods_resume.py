"""Every registered method resumes exactly: a run stopped by SIGTERM inside its second
epoch and resumed ends with the weights, method state and per-example memory of the
uninterrupted run, bit for bit (CPU, one thread)."""
import os
import signal

import pytest
import torch

from aaer.data import Dataset
from aaer.errors import TrainingInterrupted
from aaer.methods import METHODS
from aaer.runs import read_checkpoint
from aaer.train import TrainConfig, build_trainer, resume, train

pytestmark = pytest.mark.usefixtures("one_thread")

# methods whose defaults cost many passes per step: fewer for the test
LIGHTER = {"pgd": {"steps": 2}, "free": {"replays": 2}}


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    base = (y.float() / 4).view(-1, 1, 1, 1) * 160 + 40
    x = (base + 40 * torch.rand(40, 3, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    return Dataset("tiny", x[:32], y[:32], x[32:], y[32:], ["0", "1", "2", "3"],
                   (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _cfg(out, name):
    return TrainConfig(out_dir=str(out), model="small-cnn", method=name,
                       method_hparams=LIGHTER.get(name, {}), epsilon=8.0, epochs=2,
                       batch_size=8, lr_max=0.05, device="cpu", eval_protocol=None,
                       progress=False, seed=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resumes_bitwise_mid_epoch(name, tmp_path):
    ds = _data()
    train(_cfg(tmp_path / "ref", name), ds)
    cut = build_trainer(_cfg(tmp_path / "cut", name), ds)
    # epochs_for may shorten the run (Free-AT): stop inside its last epoch
    epoch = cut.cfg.optim.epochs - 1
    orig = cut.train_step

    def train_step(x, y, ctx):
        out = orig(x, y, ctx)
        if (ctx.epoch, ctx.iteration) == (epoch, 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    cut.train_step = train_step
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    assert read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["partial"] is not None
    resume(str(tmp_path / "cut"), dataset=ds)
    a = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))
    b = read_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    for part in ("model", "method", "memory", "averaged"):
        assert _same(a.get(part), b.get(part)), part


def _same(a, b) -> bool:
    """Nested dicts/lists of tensors and numbers equal bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b
