"""Export a finished run as safetensors + JSON, and read it back for `aaer eval`.

A safetensors file holds only tensors, so loading it cannot execute code (unlike a
pickle). The weights are the bare network's state dict in the lineage's key format; the
JSON next to it (same name, .json) says what they are: data set, model, number of classes,
input channels and size, the normalisation mean/std to apply to [0, 1] pixels, eps, the
method with its hyper-parameters, the training settings and the run's results, plus the
sha256 of the weights file. The same metadata (without the hash) are in the safetensors
header, so the weights file alone is enough for `aaer eval`.

safetensors is an optional dependency (the `export` extra); it is imported when needed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from aaer.io import atomic_write_bytes, atomic_write_json

FORMAT = "aaer-export/1"
HEADER_KEY = "aaer"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError("exporting needs the safetensors package: pip install 'aaer[export]' "
                         "(or pip install safetensors)") from None
    return safetensors


def metadata_path(weights_path: str) -> str:
    return os.path.splitext(weights_path)[0] + ".json"


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the run's {what} {path}: {e}") from None


def export_run(run_dir: str, out: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` (.safetensors) and its .json from a finished run; returns the metadata."""
    if not out.endswith(".safetensors"):
        raise ValueError(f"--out {out!r} must end with .safetensors")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--run {run_dir!r}: no such run directory")
    missing = [f for f in ("config.json", "model.pt", "results.json")
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise ValueError(f"--run {run_dir!r} is not a finished run (missing "
                         f"{', '.join(missing)}); valid: a run directory whose training ended "
                         f"(continue an unfinished one with `aaer train --resume {run_dir}`)")
    meta_out = metadata_path(out)
    existing = [p for p in (out, meta_out) if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist(s); pass --overwrite to "
                         "replace, or choose another --out")
    st = _safetensors()
    cfg = _read_json(os.path.join(run_dir, "config.json"), "config")
    results = _read_json(os.path.join(run_dir, "results.json"), "results")
    try:
        state = torch.load(os.path.join(run_dir, "model.pt"), map_location="cpu",
                           weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load {os.path.join(run_dir, 'model.pt')} with "
                         f"torch.load(weights_only=True): {e}") from None
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    data = cfg.get("data", {})
    shape = data.get("shape", [None, None, None])
    meta = {
        "format": FORMAT,
        "weights": os.path.basename(out),
        "state_dict": "the bare network (lineage keys); the model takes (x - mean) / std "
                      "of pixels x in [0, 1]",
        "dataset": cfg["dataset"], "model": cfg["model"],
        "num_classes": data.get("num_classes"), "in_channels": shape[0],
        "image_size": shape[1], "image_shape": shape,
        "mean": data.get("mean"), "std": data.get("std"),
        "epsilon": cfg["epsilon"], "eps": cfg.get("eps", cfg["epsilon"] / 255),
        "method": cfg.get("method_resolved", {"name": cfg.get("method")}),
        "training": {k: cfg.get(k) for k in ("epochs", "batch_size", "lr_schedule", "lr_max",
                                             "lr_min", "momentum", "weight_decay", "seed",
                                             "n_train", "precision")},
        "results": results,
        "data_dir": cfg.get("data_dir"),
        "source_run": os.path.abspath(run_dir),
        "versions": {k: v for k, v in cfg.get("environment", {}).items()
                     if k in ("aaer", "torch", "numpy", "python")},
    }
    blob = st.torch.save(tensors, metadata={HEADER_KEY: json.dumps(meta)})
    atomic_write_bytes(out, blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["metadata_file"] = meta_out
    atomic_write_json(meta_out, meta)
    return meta


def read_exported(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of an exported file; the .json next to it is used (and its
    sha256 checked) when present, else the metadata in the safetensors header."""
    st = _safetensors()
    with open(path, "rb") as f:
        blob = f.read()
    try:
        state = st.torch.load(blob)
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    meta_file = metadata_path(path)
    if os.path.isfile(meta_file):
        meta = _read_json(meta_file, "export metadata")
        actual = hashlib.sha256(blob).hexdigest()
        if meta.get("sha256") != actual:
            raise ValueError(f"{path} does not match its metadata {meta_file}: sha256 "
                             f"{actual} vs {meta.get('sha256')} recorded at export; valid: "
                             "the weights file written together with that JSON")
    elif HEADER_KEY in header:
        meta = json.loads(header[HEADER_KEY])
    else:
        raise ValueError(f"{path} has no aaer metadata ({meta_file} is missing and its header "
                         "has no 'aaer' entry); valid: a file written by `aaer export`")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format {meta.get('format')!r}, valid: {FORMAT!r}")
    return state, meta
