"""The Python door to evaluating a trained model (``aaer eval``).

    from aaer.assess import evaluate_checkpoint, load_model
    report, out = evaluate_checkpoint(EvalCommand(checkpoint="runs/x", protocol="aa"))
    model = load_model("runs/x")            # a run directory, model.pt, a lineage .pth, an
                                            # aaer-exported .safetensors

What a model's own files say comes first among the defaults: a run directory's config.json
(data set, model, eps, norm, where its data live) or an export's metadata. The settings go
through the schema and ``aaer.config.resolve.resolve_eval`` as training's do (explicit
settings, then the model's files, then the schema's defaults), and the report keeps every
value with its source. Under torchrun every process evaluates its share of the points.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from aaer.config.commands import EvalCommand
from aaer.config.resolve import checked, resolve_eval
from aaer.config.settings import Source
from aaer.errors import MissingFile, UsageError
from aaer.export import read_exported
from aaer.runs import CONFIG, MODEL, RunDir, aa_state_name, eval_name
from aaer.threat import pixel_eps


@dataclass
class ModelFiles:
    """Where a model's weights are, and what its files say about it."""

    weights: str                              # model.pt, a .pt/.pth, or a .safetensors
    run_dir: str | None                       # the run directory it belongs to, if any
    known: dict[str, tuple[Any, Source]]      # evaluation settings the files tell
    exported: dict[str, Any] | None = None    # an export's metadata
    state: dict[str, torch.Tensor] | None = None   # an export's tensors (already read)


def model_files(path: str) -> ModelFiles:
    """The weights at ``path`` (a run directory, its model.pt, a state dict, an export) and
    the settings its run's config.json or its export metadata give."""
    weights = os.path.join(path, MODEL) if os.path.isdir(path) else path
    if not os.path.isfile(weights):
        raise MissingFile(f"--checkpoint {path!r}: no such file (expected a run directory "
                          "with model.pt, a .pt/.pth state dict or an exported .safetensors "
                          "file)")
    if weights.endswith(".safetensors"):
        state, meta = read_exported(weights)
        src = Source(f"export metadata of {os.path.basename(weights)}", Source.REQUEST)
        known = {k: (meta.get(k), src) for k in ("dataset", "model", "epsilon", "data_dir",
                                                 "norm") if meta.get(k) is not None}
        return ModelFiles(weights, None, known, meta, state)
    run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    run = RunDir(run_dir)
    if not run.exists(CONFIG):
        return ModelFiles(weights, path if os.path.isdir(path) else None, {})
    cfg = run.settings(custom_data=True)
    src = Source(f"the run's config.json ({run_dir})", Source.REQUEST)
    known = {"dataset": cfg.data.dataset, "model": cfg.model.name,
             "epsilon": cfg.method.epsilon, "data_dir": cfg.data.data_dir,
             "norm": cfg.method.norm}
    return ModelFiles(weights, run_dir, {k: (v, src) for k, v in known.items()
                                         if v is not None})


def read_state(files: ModelFiles) -> dict[str, torch.Tensor]:
    """The network's state dict (a training checkpoint's "model" entry is taken)."""
    if files.state is not None:
        return files.state
    try:
        state = torch.load(files.weights, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--checkpoint {files.weights!r} cannot be loaded with torch.load("
                         f"weights_only=True): {msg}; valid: a state dict or an aaer "
                         "checkpoint") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]                      # a training checkpoint
    if not isinstance(state, dict):
        raise UsageError(f"--checkpoint {files.weights!r} holds a {type(state).__name__}, not "
                         "a state dict; valid: a state dict or an aaer checkpoint")
    return state


def build_model(files: ModelFiles, model_name: str, data) -> torch.nn.Module:
    """The named architecture for ``data`` with the weights of ``files`` (the normalisation
    an export was trained with, else the data set's)."""
    from aaer.models import build, load_state_dict_into
    mean, std = data.mean, data.std
    if files.exported is not None:
        meta = files.exported
        if meta["num_classes"] != data.num_classes:
            raise UsageError(f"{files.weights} was trained with {meta['num_classes']} classes, "
                             f"the data set {data.name} has {data.num_classes}; valid: "
                             f"--dataset {meta['dataset']} (or one with as many classes)")
        mean, std = meta["mean"], meta["std"]
    model = build(model_name, data.num_classes, data.in_channels, data.image_size, mean, std)
    try:
        load_state_dict_into(model.net, read_state(files))
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"--checkpoint {files.weights!r} does not fit --model {model_name} "
                         f"for {data.name} ({data.num_classes} classes, {data.in_channels} "
                         f"channels): {e}") from None
    return model


def load_model(path: str, *, dataset=None, model: str | None = None, data_dir=None,
               device="cpu") -> torch.nn.Module:
    """A trained model ready to evaluate (eval mode, pixels in [0, 1] in, logits out):
    ``path`` a run directory, its model.pt, a lineage state dict or an aaer export; the
    architecture and data set come from its files unless given (``dataset``: a name or a
    loaded aaer.data.Dataset, whose classes and normalisation the model takes)."""
    from aaer.data import load_dataset
    files = model_files(path)
    known = {k: v for k, (v, _) in files.known.items()}
    if dataset is None or isinstance(dataset, str):
        name = dataset or known.get("dataset")
        if name is None:
            raise UsageError(f"{path}: no config.json or export metadata says which data set "
                             "it was trained on; pass dataset=")
        dataset = load_dataset(name, data_dir or known.get("data_dir"))
    name = model or known.get("model")
    if name is None:
        raise UsageError(f"{path}: no config.json or export metadata says which model it is; "
                         "pass model=")
    return build_model(files, name, dataset).to(device).eval()


def evaluate_checkpoint(request: EvalCommand):
    """``aaer eval``: (report, path written) on the process that reports, (None, None) on the
    others under torchrun."""
    from aaer.data import load_dataset
    from aaer.engine import distributed, resolve_device
    from aaer.evaluation import evaluate, get_protocol, official_autoattack
    from aaer.io import atomic_write_json
    files = model_files(checked(request).checkpoint)
    a, sources = resolve_eval(request, files.known)

    def split(v):
        return None if v is None else [x.strip() for x in v.split(",") if x.strip()]
    protocol = get_protocol(a.protocol, norm=a.norm, n_eval=a.n_eval, pgd_steps=a.pgd_steps,
                            pgd_restarts=a.pgd_restarts, pgd_step255=a.pgd_step,
                            attacks=split(a.attacks), aa_version=a.aa_version,
                            aa_attacks=split(a.aa_attacks))
    if "autoattack" in protocol.attacks and a.aa_backend == "official":
        official_autoattack()
    dist_info = distributed.setup_distributed(a.device)      # torchrun: shard the points
    try:
        device = dist_info.device if dist_info.enabled else resolve_device(a.device)
        data = load_dataset(a.dataset, a.data_dir, download=a.download)
        model = build_model(files, a.model, data).to(device).eval()
        out = a.out or os.path.join(files.run_dir or ".", eval_name(protocol.name))
        # a killed AutoAttack resumes from here on the same command; deleted when complete
        aa_state = os.path.join(os.path.dirname(os.path.abspath(out)),
                                aa_state_name(protocol.name))
        report = evaluate(model, data.test_x, data.test_y, pixel_eps(a.epsilon, a.norm),
                          protocol, batch_size=a.batch_size, device=device, seed=a.seed,
                          precision=a.eval_precision, aa_backend=a.aa_backend,
                          aa_state_path=aa_state,
                          shard=distributed.shard_of(dist_info) if dist_info.enabled else None)
        if not dist_info.is_main:                 # rank 0 alone reports
            return None, None
        report.update(checkpoint=os.path.abspath(files.weights), model=a.model,
                      dataset=a.dataset,
                      settings={k: v for k, v in vars(a).items()},
                      sources={k: str(v) for k, v in sources.items()},
                      source_kinds={k: v.kind for k, v in sources.items()})
        atomic_write_json(out, report)
        return report, out
    finally:
        distributed.shutdown(dist_info)
