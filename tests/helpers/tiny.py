"""Tiny in-memory training for tests: a small BatchNorm conv net, a tiny data set, a short
run's settings, and what the resume and monitor tests do to a trainer (a real signal at a
chosen step, scripted probe values) and check afterwards (bitwise-equal weights)."""
from __future__ import annotations

import json
import os

import torch

from aaer.data.datasets import Dataset
from aaer.monitor import COMonitor
from aaer.training import TrainConfig


class TinyNet(torch.nn.Module):
    """A small conv net with BatchNorm, for tests that need real BN/train-mode behaviour."""

    def __init__(self, in_ch=3, n_classes=10, width=8, freq=None):
        super().__init__()
        # freq: feed sin(freq * x) instead of x, a strongly curved input map under which a
        # single attack step often lowers the loss (abnormal adversarial examples)
        self.freq = freq
        self.conv1 = torch.nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, n_classes)

    def forward(self, x):
        if self.freq is not None:
            x = torch.sin(self.freq * x)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny_dataset(n_train=40, n_test=8, size=16, classes=10, seed=0, name="cifar10",
                 learnable=False):
    """An aaer Dataset of uint8 RGB images, drawn from a generator seeded with ``seed``.

    learnable=False: pixels and labels uniform at random (nothing to learn; enough for
    tests that compare a run with itself). learnable=True: labels cycle through the
    classes and each class has its own brightness, so that there is something to learn.
    """
    g = torch.Generator().manual_seed(seed)
    if learnable:
        n = n_train + n_test
        y = torch.arange(n) % classes
        base = (y.float() / classes).view(-1, 1, 1, 1) * 160 + 40
        x = (base + 40 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 255)
        x = x.to(torch.uint8)
        split = (x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    else:
        def draw(n):
            return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.randint(0, classes, (n,), generator=g))
        split = (*draw(n_train), *draw(n_test))
    return Dataset(name, *split, classes=[str(i) for i in range(classes)],
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="synthetic")


def tiny_config(out_dir, **kw):
    base = dict(out_dir=str(out_dir), dataset="cifar10", model="small-cnn", method="n-aaer",
                method_hparams={"warmup_epochs": 2.5}, epochs=2, batch_size=8, lr_max=0.1,
                eval_protocol=None, progress=False, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def assert_same_weights(a: dict, b: dict):
    assert list(a) == list(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ after resume: {differ}"


def read_rows(path):
    return [json.loads(l) for l in open(path).read().splitlines() if l.strip()]


def signal_at(trainer, epoch, step, signum):
    """Send `signum` to this process right after (epoch, step) of the run."""
    orig = trainer.train_step

    def train_step(x, y, ctx):
        out = orig(x, y, ctx)
        if (ctx.epoch, ctx.iteration) == (epoch, step):
            os.kill(os.getpid(), signum)
        return out

    trainer.train_step = train_step


def stopped_and_resumed(cfg, dataset, epoch=None, step=1) -> dict:
    """Train ``cfg`` on ``dataset``, stopped by SIGTERM right after (epoch, step), then
    resumed to the end; the run's final checkpoint (the stop must have saved a partial
    epoch). ``epoch`` None: the run's last (the method may change the epoch count)."""
    import signal

    import pytest

    from aaer.errors import TrainingInterrupted
    from aaer.runs import read_checkpoint
    from aaer.training import build_trainer, resume
    cut = build_trainer(cfg, dataset)
    epoch = cut.cfg.optim.epochs - 1 if epoch is None else epoch
    signal_at(cut, epoch, step, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    out = cfg.runtime.out_dir if hasattr(cfg, "runtime") else cfg.out_dir
    assert read_checkpoint(os.path.join(out, "checkpoint.pt"))["partial"] is not None
    resume(out, dataset=dataset)
    return read_checkpoint(os.path.join(out, "checkpoint.pt"))


def same_state(a, b) -> bool:
    """Nested dicts/lists of tensors and numbers equal bit for bit (tensors: dtype too)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and \
            all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def scripted_probes(monkeypatch, pgd, fgsm, models=None):
    """Make every probe return the next (pgd, fgsm) pair, so the rule's input is known.
    ``models``: a list that collects the model each probe measured."""
    calls = []

    def measure(self, model):
        i = len(calls)
        calls.append(i)
        if models is not None:
            models.append(model)
        return {"clean": 0.9, "fgsm": fgsm[i], "pgd": pgd[i], "seconds": 0.0}

    monkeypatch.setattr(COMonitor, "measure", measure)
    return calls
