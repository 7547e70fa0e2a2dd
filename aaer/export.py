"""Export a finished run as safetensors + JSON, and read it back for `aaer eval`.

A safetensors file holds only tensors, so loading it cannot execute code (unlike a
pickle). The weights are the bare network's state dict in the lineage's key format; the
JSON next to it (same name, .json) says what they are: data set, model, number of classes,
input channels and size, the normalisation mean/std to apply to [0, 1] pixels, eps, the
method with its hyper-parameters, the training settings and the run's results, plus the
sha256 of the weights file. The same metadata (without the hash) are in the safetensors
header, so the weights file alone is enough for `aaer eval`.

"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import safetensors.torch
from safetensors import safe_open

from aaer.errors import MissingFile, UsageError
from aaer.io import atomic_write_bytes, atomic_write_json, read_json
from aaer.runs import CONFIG, MODEL, RESULTS, RunDir

FORMAT = "aaer-export/1"
# what `aaer eval` needs to rebuild the model from an exported file
REQUIRED = ("dataset", "model", "num_classes", "mean", "std", "epsilon")
HEADER_KEY = "aaer"


def metadata_path(weights_path: str) -> str:
    return os.path.splitext(weights_path)[0] + ".json"


def export_run(run_dir: str, out: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` (.safetensors) and its .json from a finished run; returns the metadata."""
    if not out.endswith(".safetensors"):
        raise UsageError(f"--out {out!r} must end with .safetensors")
    if not os.path.isdir(run_dir):
        raise MissingFile(f"--run {run_dir!r}: no such run directory")
    run = RunDir(run_dir)
    missing = [f for f in (CONFIG, MODEL, RESULTS) if not run.exists(f)]
    if missing:
        raise UsageError(f"--run {run_dir!r} is not a finished run (missing "
                         f"{', '.join(missing)}); valid: a run directory whose training ended "
                         f"(continue an unfinished one with `aaer train --resume {run_dir}`)")
    meta_out = metadata_path(out)
    existing = [p for p in (out, meta_out) if os.path.exists(p)]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --overwrite to "
                         "replace, or choose another --out")
    cfg, raw, results = run.settings(custom_data=True), run.config(), run.results()
    state = run.model_state()
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    data = raw.get("data", {})
    shape = data.get("shape", [None, None, None])
    o = cfg.optim
    meta = {
        "format": FORMAT,
        "weights": os.path.basename(out),
        "state_dict": "the bare network (lineage keys); the model takes (x - mean) / std "
                      "of pixels x in [0, 1]",
        "dataset": cfg.data.dataset, "model": cfg.model.name,
        "num_classes": data.get("num_classes"), "in_channels": shape[0],
        "image_size": shape[1], "image_shape": shape,
        # what the model's normalisation layer uses (runs before --normalization: the data's)
        "mean": raw.get("model_input", data).get("mean"),
        "std": raw.get("model_input", data).get("std"),
        "model_args": cfg.model.kwargs, "normalization": cfg.model.normalization,
        "epsilon": cfg.method.epsilon, "eps": cfg.eps, "norm": cfg.method.norm,
        "method": raw.get("method_resolved", {"name": cfg.method.name}),
        "training": {"epochs": o.epochs, "batch_size": o.batch_size,
                     "lr_schedule": o.lr_schedule, "lr_max": o.lr_max, "lr_min": o.lr_min,
                     "momentum": o.momentum, "weight_decay": o.weight_decay, "seed": o.seed,
                     "n_train": cfg.data.n_train, "precision": cfg.runtime.precision},
        "results": results,
        "data_dir": cfg.data.data_dir,
        "source_run": os.path.abspath(run_dir),
        "versions": {k: v for k, v in raw.get("environment", {}).items()
                     if k in ("aaer", "torch", "numpy", "python")},
    }
    blob = safetensors.torch.save(tensors, metadata={HEADER_KEY: json.dumps(meta)})
    atomic_write_bytes(out, blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["metadata_file"] = meta_out
    atomic_write_json(meta_out, meta)
    return meta


def read_exported(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, metadata) of an exported file; the .json next to it is used (and its
    sha256 checked) when present, else the metadata in the safetensors header."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise UsageError(f"{path} cannot be read: {e}") from None
    try:
        state = safetensors.torch.load(blob)
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        raise UsageError(f"{path} is not a readable safetensors file: {e}") from None
    meta_file = metadata_path(path)
    if os.path.isfile(meta_file):
        meta = read_json(meta_file, "it is written by `aaer export` next to the weights; "
                         "export the run again, or remove it to use the weights' header")
        actual = hashlib.sha256(blob).hexdigest()
        if meta.get("sha256") != actual:
            raise UsageError(f"{path} does not match its metadata {meta_file}: sha256 "
                             f"{actual} vs {meta.get('sha256')} recorded at export; valid: "
                             "the weights file written together with that JSON")
    elif HEADER_KEY in header:
        try:
            meta = json.loads(header[HEADER_KEY])
        except ValueError as e:
            raise UsageError(f"{path}: the 'aaer' metadata in its header is not valid JSON "
                             f"({e}); valid: a file written by `aaer export`") from None
    else:
        raise UsageError(f"{path} has no aaer metadata ({meta_file} is missing and its header "
                         "has no 'aaer' entry); valid: a file written by `aaer export`")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UsageError(f"{path}: metadata format {found!r}, valid: {FORMAT!r}")
    missing = [k for k in REQUIRED if meta.get(k) is None]
    if missing:
        raise UsageError(f"{path}: its metadata lack {', '.join(missing)}; valid: a file "
                         "written by `aaer export` (export the run again)")
    return state, meta
