"""Check every setting before any work starts; refuse bad input with a message that names
the bad value and says what would be valid.

Two stages, so that nothing is written for a bad run:
- ``validate_config`` needs no data: names, ranges, the device, the protocol and the state
  of the out-dir (a finished run is refused unless overwrite; an unfinished one needs
  resume or overwrite). It runs before the data are loaded.
- ``validate_data`` needs the loaded data set: sizes against the data, whether the model
  takes these images, and on resume whether the checkpoint fits the model and the data.
  It runs before the run directory is created or touched.
Every error is a ValueError (FileNotFoundError for missing paths); the CLI turns them
into exit code 2.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from typing import Any

import torch

from aaer.guard import ON_NAN

# settings that may change when a run is resumed (all others must match the checkpoint)
RESUMABLE_OVERRIDES = ("device", "data_dir", "download", "on_nan", "progress", "out_dir",
                       "overwrite", "notes")
SEED_MAX = 2 ** 32 - 1


def _bad(name: str, value, valid: str):
    raise ValueError(f"invalid {name} {value!r}: {valid}")


def check_model_name(name: str) -> None:
    from aaer.models import list_models
    if name not in list_models() and not re.match(r"^wrn-\d+-\d+$", str(name)):
        raise ValueError(f"unknown --model {name!r}; valid: {', '.join(list_models())} or "
                         "wrn-<depth>-<widen> (depth = 6n+4)")


def check_method(name: str, eps: float, hparams: dict[str, Any]):
    from aaer.methods import METHODS, create_method
    if name not in METHODS:
        raise ValueError(f"unknown --method {name!r}; valid: {', '.join(METHODS)}")
    shown = ", ".join(f"{k}={v!r}" for k, v in hparams.items())
    try:
        return create_method(name, eps, **hparams)
    except ValueError as e:
        raise ValueError(f"invalid settings for --method {name} ({shown}): {e}") from None
    except TypeError as e:   # e.g. --set alpha=abc: a string where a number belongs
        raise ValueError(f"invalid settings for --method {name} ({shown}): {e}; valid: "
                         "numbers for numeric settings such as alpha, lamda1-3 and "
                         "warmup_epochs") from None


def check_out_dir(out_dir: str, *, overwrite: bool, resume: bool) -> None:
    """A new out-dir, a finished run only with overwrite, an unfinished one only with
    resume (or overwrite); resume needs config.json and checkpoint.pt."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir!r} is a file; valid: a new directory or a run "
                         "directory")
    finished = os.path.exists(os.path.join(out_dir, "results.json"))
    has_ckpt = os.path.exists(os.path.join(out_dir, "checkpoint.pt"))
    if resume:
        if finished:
            raise ValueError(f"--resume {out_dir!r}: the run is finished (results.json), "
                             "nothing to resume; evaluate it with `aaer eval`, or train it "
                             "again with its flags and --overwrite")
        if not os.path.isfile(os.path.join(out_dir, "config.json")):
            raise FileNotFoundError(f"--resume {out_dir!r}: no config.json there; valid: a "
                                    "run directory written by `aaer train`")
        if not has_ckpt:
            raise FileNotFoundError(f"--resume {out_dir!r}: no checkpoint.pt there (the run "
                                    "stopped before its first checkpoint); start it again "
                                    "with its flags and --overwrite")
        return
    if overwrite:
        return
    if finished:
        raise ValueError(f"out-dir {out_dir!r} holds a finished run (results.json); "
                         "pass --overwrite to replace it or choose another --out-dir")
    if has_ckpt:
        raise ValueError(f"out-dir {out_dir!r} holds an unfinished run (checkpoint.pt); "
                         f"continue it with --resume {out_dir}, pass --overwrite to start "
                         "again, or choose another --out-dir")


def validate_config(cfg, *, resume: bool = False) -> None:
    """Everything that can be checked without the data (see the module docstring)."""
    from aaer.data.datasets import canonical_name
    from aaer.train import resolve_device

    cfg.validate()
    canonical_name(cfg.dataset)
    check_model_name(cfg.model)
    check_method(cfg.method, cfg.eps, cfg.method_hparams)
    if not (0 <= cfg.seed <= SEED_MAX):
        _bad("--seed", cfg.seed, f"must be in [0, {SEED_MAX}]")
    if cfg.eval_batch_size is not None and cfg.eval_batch_size < 1:
        _bad("--eval-batch-size", cfg.eval_batch_size, "must be >= 1")
    if cfg.probe_steps < 1:
        _bad("--probe-steps", cfg.probe_steps, "must be >= 1")
    if cfg.on_nan not in ON_NAN:
        _bad("--on-nan", cfg.on_nan, f"valid: {', '.join(ON_NAN)}")
    if cfg.eval_protocol:
        from aaer.evaluate import get_protocol
        get_protocol(cfg.eval_protocol)
    resolve_device(cfg.device)
    if cfg.data_dir is not None and not cfg.download and not os.path.exists(cfg.data_dir):
        raise FileNotFoundError(f"--data-dir {cfg.data_dir!r} does not exist; valid: a "
                                "directory, release archive or .zip holding the data set "
                                "(or add --download)")
    check_out_dir(cfg.out_dir, overwrite=cfg.overwrite, resume=resume)


def check_model_fits(model: str, num_classes: int, in_channels: int, height: int,
                     width: int) -> None:
    """Build the model on the meta device and push a batch of these images through it."""
    from aaer.models import create_model, list_models

    def fits(name: str) -> str | None:
        try:
            with torch.device("meta"):
                net = create_model(name, num_classes, in_channels, height).eval()
                z = net(torch.empty(2, in_channels, height, width))
            if tuple(z.shape) != (2, num_classes):
                return f"it gives outputs of shape {tuple(z.shape)}, not (2, {num_classes})"
        except (RuntimeError, ValueError) as e:
            return str(e).strip().splitlines()[0]
        return None

    problem = fits(model)
    if problem is not None:
        ok = [m for m in list_models() if m != model and fits(m) is None]
        raise ValueError(f"--model {model!r} does not fit the {in_channels}x{height}x{width} "
                         f"images of this data set: {problem}; valid for these images: "
                         f"{', '.join(ok) or 'none of the registered models'}")


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the training images and labels (what a resumed run must train on)."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _check_checkpoint(cfg, dataset, n_train: int, ckpt: dict[str, Any]) -> None:
    from dataclasses import asdict

    from aaer.models import create_model, load_state_dict_into

    saved = ckpt.get("config", {})
    now = asdict(cfg)
    changed = [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in now
               if k in saved and k not in RESUMABLE_OVERRIDES and saved[k] != now[k]]
    if changed:
        raise ValueError("the run's config.json no longer matches its checkpoint.pt ("
                         + "; ".join(changed) + "); valid: the settings the run was started "
                         "with")
    c, h, w = dataset.train_x.shape[1:]
    with torch.device("meta"):
        net = create_model(cfg.model, dataset.num_classes, c, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # copying into meta tensors is a no-op by design
        try:
            load_state_dict_into(net, ckpt["model"])
        except ValueError as e:
            raise ValueError(f"checkpoint.pt does not fit --model {cfg.model} with "
                             f"{dataset.num_classes} classes and {c} channels: {e}") from None
    data = ckpt.get("data", {})
    if data.get("n_train") != n_train or data.get("num_classes") != dataset.num_classes:
        raise ValueError(f"the data set has {n_train} training images and "
                         f"{dataset.num_classes} classes, the checkpoint was trained on "
                         f"{data.get('n_train')} images and {data.get('num_classes')} classes;"
                         " valid: the data the run was started with")
    x, y = dataset.train_x[:n_train], dataset.train_y[:n_train]
    if data.get("sha256") and data_fingerprint(x, y) != data["sha256"]:
        raise ValueError(f"the training data in --data-dir {cfg.data_dir!r} differ from those "
                         "the run was started with (sha256 of images and labels); valid: the "
                         "same data")


def validate_data(cfg, dataset, ckpt: dict[str, Any] | None = None) -> None:
    """Data-dependent checks, before the run directory is touched."""
    n_train, n_test = len(dataset.train_y), len(dataset.test_y)
    if cfg.n_train is not None and cfg.n_train > n_train:
        _bad("--n-train", cfg.n_train, f"{dataset.name} has {n_train} training images; "
             f"valid: 1..{n_train}")
    if cfg.n_eval is not None and cfg.n_eval > n_test:
        _bad("--n-eval", cfg.n_eval, f"{dataset.name} has {n_test} test images; "
             f"valid: 1..{n_test}")
    if cfg.probe_n > n_test:
        _bad("--probe-n", cfg.probe_n, f"{dataset.name} has {n_test} test images; "
             f"valid: 0..{n_test}")
    if dataset.num_classes < 2:
        raise ValueError(f"data set {dataset.name} has {dataset.num_classes} class; "
                         "classification needs at least 2")
    c, h, w = dataset.train_x.shape[1:]
    check_model_fits(cfg.model, dataset.num_classes, int(c), int(h), int(w))
    if ckpt is not None:
        _check_checkpoint(cfg, dataset, n_train if cfg.n_train is None else cfg.n_train, ckpt)


def check_eval_settings(*, epsilon: float, protocol: str, n_eval, pgd_steps, pgd_restarts,
                        pgd_step, batch_size: int, dataset: str, model: str) -> None:
    """`aaer eval`'s settings, before any data are loaded."""
    from aaer.data.datasets import canonical_name
    from aaer.evaluate import get_protocol

    if not (0 < epsilon <= 255):
        _bad("--epsilon", epsilon, "must be in (0, 255] (units of 1/255)")
    get_protocol(protocol)
    for name, value in (("--n-eval", n_eval), ("--pgd-steps", pgd_steps),
                        ("--pgd-restarts", pgd_restarts)):
        if value is not None and value < 1:
            _bad(name, value, "must be >= 1")
    if pgd_step is not None and not pgd_step > 0:
        _bad("--pgd-step", pgd_step, "must be > 0 (units of 1/255)")
    if batch_size < 1:
        _bad("--batch-size", batch_size, "must be >= 1")
    canonical_name(dataset)
    check_model_name(model)
