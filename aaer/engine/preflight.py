"""Checks that need the data, run before the run directory is created or touched.

The settings themselves are checked by the schema (aaer.config); what is left needs the
loaded data set: sizes against the data, whether the model takes these images, and on
resume whether the checkpoint fits the model, the settings and the data. Every error is a
ValueError naming the setting or file and what would be valid.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import torch

from aaer.config import SETTINGS, RunConfig
from aaer.errors import MissingFile, UsageError
from aaer.models import create_model, list_models, load_state_dict_into
from aaer.runs import checkpoint_settings


def check_data_dir(cfg: RunConfig) -> None:
    d = cfg.data
    if d.data_dir is not None and not d.download and not os.path.exists(d.data_dir):
        raise MissingFile(f"--data-dir {d.data_dir!r} does not exist; valid: a "
                                "directory, release archive or .zip holding the data set "
                                "(or add --download)")


def check_model_fits(model: str, num_classes: int, in_channels: int, height: int,
                     width: int, kwargs: dict | None = None) -> None:
    """Build the model on the meta device and push a batch of these images through it."""

    def fits(name: str, kw: dict) -> str | None:
        try:
            with torch.device("meta"):
                net = create_model(name, num_classes, in_channels, height, **kw).eval()
                z = net(torch.empty(2, in_channels, height, width))
            if tuple(z.shape) != (2, num_classes):
                return f"it gives outputs of shape {tuple(z.shape)}, not (2, {num_classes})"
        except (RuntimeError, ValueError) as e:
            return str(e).strip().splitlines()[0]
        return None

    problem = fits(model, kwargs or {})
    if problem is not None:
        ok = [m for m in list_models() if m != model and fits(m, {}) is None]
        raise UsageError(f"--model {model!r} does not fit the {in_channels}x{height}x{width} "
                         f"images of this data set: {problem}; valid for these images: "
                         f"{', '.join(ok) or 'none of the registered models'}")


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the training images and labels (what a resumed run must train on)."""
    h = hashlib.sha256()
    if hasattr(x, "fingerprint"):              # streamed images: their files
        h.update(x.fingerprint().encode())
        x = y[:0]
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def changed_settings(cfg: RunConfig, ckpt: dict[str, Any]) -> list[str]:
    """Settings of ``cfg`` that differ from those the checkpoint was written with (the
    resumable ones excepted)."""
    saved = checkpoint_settings(ckpt)
    now = cfg.to_dict()
    then = saved.to_dict()
    out = []
    for path, s in SETTINGS.items():
        if s.resumable or path == "runtime.out_dir" or path == "runtime.overwrite":
            continue
        section, name = path.split(".")
        a, b = then[section][name], now[section][name]
        if a != b:
            out.append(f"{s.flag}: checkpoint {a!r}, now {b!r}")
    return out


def _check_checkpoint(cfg: RunConfig, dataset, train, ckpt: dict[str, Any]) -> None:
    changed = changed_settings(cfg, ckpt)
    if changed:
        raise UsageError("the run's config.json no longer matches its checkpoint.pt ("
                         + "; ".join(changed) + "); valid: the settings the run was started "
                         "with")
    c, h, w = dataset.train_x.shape[1:]
    with torch.device("meta"):
        net = create_model(cfg.model.name, dataset.num_classes, c, h, **cfg.model.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # copying into meta tensors is a no-op by design
        try:
            load_state_dict_into(net, ckpt["model"])
        except ValueError as e:
            raise UsageError(f"checkpoint.pt does not fit --model {cfg.model.name} with "
                             f"{dataset.num_classes} classes and {c} channels: {e}") from None
    data = ckpt.get("data", {})
    x, y = train
    n_train = int(x.shape[0])
    if data.get("n_train") != n_train or data.get("num_classes") != dataset.num_classes:
        raise UsageError(f"the data set has {n_train} training images and "
                         f"{dataset.num_classes} classes, the checkpoint was trained on "
                         f"{data.get('n_train')} images and {data.get('num_classes')} classes;"
                         " valid: the data the run was started with")
    if data.get("sha256") and data_fingerprint(x, y) != data["sha256"]:
        raise UsageError(f"the training data in --data-dir {cfg.data.data_dir!r} differ from "
                         "those the run was started with (sha256 of images and labels); "
                         "valid: the same data")


def check_data(cfg: RunConfig, dataset) -> None:
    """Data-dependent checks, before the run directory is touched."""
    n_all, n_test = len(dataset.train_y), len(dataset.test_y)
    d, e = cfg.data, cfg.evaluation
    if d.val_n and d.val_n >= n_all:
        raise UsageError(f"invalid --val-n {d.val_n!r}: {dataset.name} has {n_all} training "
                         f"images; valid: 0..{n_all - 1}")
    n_pool = n_all - (d.val_n or 0)
    if d.n_train is not None and d.n_train > n_pool:
        held = f" ({d.val_n} held out by --val-n)" if d.val_n else ""
        raise UsageError(f"invalid --n-train {d.n_train!r}: {dataset.name} has {n_pool} "
                         f"training images{held}; valid: 1..{n_pool}")
    if e.n_eval is not None and e.n_eval > n_test:
        raise UsageError(f"invalid --n-eval {e.n_eval!r}: {dataset.name} has {n_test} test "
                         f"images; valid: 1..{n_test}")
    if dataset.num_classes < 2:
        raise UsageError(f"data set {dataset.name} has {dataset.num_classes} class; "
                         "classification needs at least 2")
    c, h, w = dataset.train_x.shape[1:]
    check_model_fits(cfg.model.name, dataset.num_classes, int(c), int(h), int(w),
                     cfg.model.kwargs)


def check_resume(cfg: RunConfig, dataset, ckpt: dict[str, Any], train) -> None:
    """Does the checkpoint fit the settings, the model and the data? ``train``: (x, y), the
    images the run trains on (after --n-train and a held-out probe batch)."""
    _check_checkpoint(cfg, dataset, train, ckpt)
