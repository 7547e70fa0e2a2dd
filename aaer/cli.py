"""Command line: `aaer train | eval | methods | models | datasets`.

`aaer train` accepts the seed script's flags (--epsilon, --alpha, --delta-init, --clamp,
--lamda1/2/3, --epoch[s], ...) with the seed's meaning, so `python3 AAER.py ...` at the
repository root is `aaer train` with the data set inferred from the out-dir's name.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

EXIT_USAGE = 2
# training and evaluation precisions (aaer.train.PRECISIONS; kept here so --help needs no torch)
PRECISION_CHOICES = ("fp32", "bf16", "fp16")

# Data-set defaults that differ from CIFAR's (SPEC §3).
DATASET_DEFAULTS = {
    "svhn": {"epochs": 15, "lr_max": 0.05, "lr_peak": 0.4, "warmup_epochs": 5.0},
}
SEED_DEFAULTS = {"alpha": 1.0, "delta_init": "random", "clamp": 0,
                 "lamda1": 1.0, "lamda2": 4.0, "lamda3": 1.5}
MODEL_ALIASES = {"PreActResNet18": "preactresnet18", "WideResNet": "wrn-34-10"}
OUT_DIR_DATASETS = [(r"cifar-?100", "cifar100"), (r"cifar-?10", "cifar10"), (r"svhn", "svhn"),
                    (r"tiny", "tinyimagenet"), (r"imagenet", "imagefolder"),
                    (r"fashion", "fashion-mnist"), (r"mnist", "mnist")]


class UsageError(ValueError):
    """A bad setting: reported with exit code 2 before any work starts."""


def _fmt():
    return argparse.ArgumentDefaultsHelpFormatter


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="cifar10, cifar100, svhn, tinyimagenet, imagefolder, mnist, "
                        "fashion-mnist (default: cifar10; AAER.py infers it from --out-dir)")
    g.add_argument("--data-dir", default=None, help="where the data set lives (directory, "
                   "archive or .zip); default: ./data, or Debian's path for fashion-mnist")
    g.add_argument("--download", action="store_true", help="download the official archive "
                   "(checksum-verified) if it is not in --data-dir")
    g.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    g = p.add_argument_group("model and method")
    g.add_argument("--model", default="preactresnet18", help="model name (see `aaer models`)")
    g.add_argument("--method", default=None, help="training method (see `aaer methods`); "
                   "default: rs-aaer if --clamp 1 else n-aaer, with the seed script's defaults")
    g.add_argument("--epsilon", type=float, default=8.0, help="L-inf radius in 1/255 units")
    g.add_argument("--alpha", type=float, default=None, help="attack step as a multiple of eps")
    g.add_argument("--delta-init", choices=["zero", "random"], default=None,
                   help="initial perturbation of single-step methods")
    g.add_argument("--clamp", type=int, choices=[0, 1], default=None,
                   help="1: RS variant (noise U(-eps,eps), projection); 0: N variant "
                        "(noise U(-2eps,2eps), no projection)")
    g.add_argument("--lamda1", type=float, default=None, help="AAER: overall weight")
    g.add_argument("--lamda2", type=float, default=None, help="AAER: CE-variation weight")
    g.add_argument("--lamda3", type=float, default=None, help="AAER: logit-variation weight")
    g.add_argument("--aaer-mode", choices=["reference", "paper"], default=None,
                   help="AAER: reference = the published code (CE term without gradient); "
                        "paper = CE term with gradient through l1")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warm-up of the attack step over N epochs (SVHN: 5; else 0)")
    g.add_argument("--preset", default=None, help="a method preset (see `aaer methods`); "
                   "<dataset>-eps<N> presets apply by themselves when they exist")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method hyper-parameter, e.g. --set lamda2=3.0")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=None,
                   help="training epochs (30; SVHN 15)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr-schedule", choices=["cyclic", "multistep"], default="cyclic")
    g.add_argument("--lr-min", type=float, default=0.0)
    g.add_argument("--lr-max", type=float, default=None, help="peak learning rate (0.2; SVHN 0.05)")
    g.add_argument("--lr-peak", type=float, default=None,
                   help="cyclic: where the peak is, as a fraction of training (0.5; SVHN 0.4)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default="train_aaer_output", help="the run directory")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run in --out-dir")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="fp32: the reference; bf16/fp16: autocast (fp16 with loss scaling); "
                   "losses, the AAE test and the regulariser stay fp32")
    g.add_argument("--eval-protocol", default="lineage",
                   help="evaluation after training (see `aaer eval --help`); none to skip")
    g.add_argument("--n-eval", type=int, default=None, help="evaluate on the first N test points")
    g.add_argument("--eval-batch-size", type=int, default=None,
                   help="final evaluation and probe batch (default: 256 on CPU, 1024 on CUDA)")
    g.add_argument("--eval-precision", choices=PRECISION_CHOICES, default="fp32",
                   help="final evaluation under autocast (recorded in results.json); fp32: "
                   "the reference")
    g.add_argument("--probe-n", type=int, default=0,
                   help="per-epoch clean/FGSM/PGD probe on the first N test points (0: off)")
    g.add_argument("--probe-steps", type=int, default=10, help="PGD steps of the probe")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_performance_args(p)
    add_monitor_args(p)


def add_performance_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("performance (see README: Performance, precision, multi-GPU)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (methods needing double backprop run eagerly)")
    g.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="NHWC memory format; auto: on for conv nets on CUDA")


def add_monitor_args(p: argparse.ArgumentParser) -> None:
    """Flags of the catastrophic-overfitting monitor (aaer/monitor.py); on with --probe-n."""
    g = p.add_argument_group("catastrophic-overfitting monitor (needs --probe-n N)")
    g.add_argument("--probe-source", choices=["test", "holdout"], default="test",
                   help="probe batch: the first N test points, or N training images held "
                        "out of training")
    g.add_argument("--probe-every", type=int, default=0, metavar="STEPS",
                   help="also probe every STEPS optimiser steps (0: once per epoch)")
    g.add_argument("--on-co", choices=["warn", "stop", "rollback"], default="warn",
                   help="response to CO: log it; stop with the best probe's weights; or "
                        "restore them and continue with a smaller step / stronger regulariser")
    g.add_argument("--co-drop", type=float, default=0.2,
                   help="CO when probe PGD accuracy falls more than this below the reference")
    g.add_argument("--co-reference", choices=["best", "previous"], default="best",
                   help="the reference: best probe so far, or the probe before the drop "
                        "(Wong et al.)")
    g.add_argument("--co-fgsm-ratio", type=float, default=0.5,
                   help="... while probe FGSM accuracy fell by less than this times the PGD "
                        "fall since the reference (0: not checked, Wong et al.'s rule alone)")
    g.add_argument("--co-rel-drop", type=float, default=0.75,
                   help="... or by more than this fraction of the reference, whichever is "
                        "smaller (matters when best PGD accuracy < 0.2 / this; 0: off)")
    g.add_argument("--co-min-drop", type=float, default=0.05,
                   help="the relative threshold is never below this (a model whose best PGD "
                        "accuracy is under it was never robust: no CO to detect)")
    g.add_argument("--co-gap", type=float, default=0.25,
                   help="also CO: probe FGSM accuracy at least this above a PGD accuracy that "
                        "is <= --co-floor (a run in CO from its start; 0: off)")
    g.add_argument("--co-floor", type=float, default=0.05,
                   help="PGD accuracy at or below which --co-gap applies")
    g.add_argument("--co-patience", type=int, default=2,
                   help="consecutive probes that must meet the rule (Wong et al.: 1)")
    g.add_argument("--rollback-change", choices=["auto", "step", "regularizer"], default="auto",
                   help="what a rollback changes (auto: AAER's lamda1, else the step alpha)")
    g.add_argument("--rollback-step-factor", type=float, default=0.75,
                   help="rollback: alpha is multiplied by this")
    g.add_argument("--rollback-reg-factor", type=float, default=2.0,
                   help="rollback: lamda1 is multiplied by this")
    g.add_argument("--max-rollbacks", type=int, default=2,
                   help="after this many rollbacks the next CO stops the run")
    g.add_argument("--aae-per-class", action="store_true",
                   help="also log the AAE count and fraction per class")


def monitor_config_kwargs(args) -> dict:
    return {"probe_source": args.probe_source, "probe_every": args.probe_every,
            "on_co": args.on_co, "co_drop": args.co_drop, "co_reference": args.co_reference,
            "co_fgsm_ratio": args.co_fgsm_ratio,
            "co_rel_drop": args.co_rel_drop, "co_patience": args.co_patience,
            "co_min_drop": args.co_min_drop, "co_gap": args.co_gap,
            "co_floor": args.co_floor, "rollback_change": args.rollback_change,
            "rollback_step_factor": args.rollback_step_factor,
            "rollback_reg_factor": args.rollback_reg_factor,
            "max_rollbacks": args.max_rollbacks, "aae_per_class": args.aae_per_class}


def _parse_set(items):
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def infer_dataset(out_dir: str) -> str | None:
    name = os.path.basename(os.path.normpath(out_dir)).lower()
    for pattern, ds in OUT_DIR_DATASETS:
        if re.search(pattern, name):
            return ds
    return None


def config_from_args(args, *, seed_script: bool = False):
    """Resolve flags to a TrainConfig, applying data-set and method defaults."""
    from aaer.methods import METHODS
    from aaer.train import TrainConfig

    notes = []
    dataset = args.dataset
    if dataset is None and seed_script:
        dataset = infer_dataset(args.out_dir)
        if dataset:
            notes.append(f"dataset {dataset!r} inferred from --out-dir {args.out_dir!r} "
                         "(pass --dataset to override)")
    dataset = dataset or "cifar10"
    ds_defaults = DATASET_DEFAULTS.get(dataset, {})

    method = args.method
    hp = {"alpha": args.alpha, "delta_init": args.delta_init, "clamp": args.clamp,
          "lamda1": args.lamda1, "lamda2": args.lamda2, "lamda3": args.lamda3,
          "mode": args.aaer_mode, "warmup_epochs": args.warmup_epochs}
    hp.update(_parse_set(args.set))
    if method is None:
        # the seed script: --clamp picks the variant, unset flags take its defaults
        for k, v in SEED_DEFAULTS.items():
            if hp.get(k) is None:
                hp[k] = v
        method = "rs-aaer" if hp["clamp"] == 1 else "n-aaer"
    elif method in ("rs-aaer", "n-aaer") and hp["lamda2"] is None and hp["lamda3"] is None:
        (l2, l3), how = METHODS[method].published(dataset, args.epsilon)
        hp["lamda2"], hp["lamda3"] = l2, l3
        notes.append(f"{method} lamda2={l2}, lamda3={l3}: {how}")
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; valid: {', '.join(METHODS)}")
    cls = METHODS[method]
    presets = getattr(cls, "presets", {})
    auto = f"{dataset}-eps{round(args.epsilon)}"
    preset = args.preset or (auto if auto in presets else None)
    if preset is not None:
        if preset not in presets:
            raise UsageError(f"--preset {preset!r} is not a preset of {method}; valid: "
                             f"{', '.join(presets) or 'none'}")
        for k, v in presets[preset].items():
            if hp.get(k) is None:
                hp[k] = v
        notes.append(f"{method} preset {preset!r}: {presets[preset]} (explicit flags win)")
    if hp.get("warmup_epochs") is None and "warmup_epochs" in ds_defaults:
        hp["warmup_epochs"] = ds_defaults["warmup_epochs"]
        notes.append(f"{dataset}: linear warm-up of the attack over "
                     f"{ds_defaults['warmup_epochs']:g} epochs (--warmup-epochs 0 turns it off)")
    import inspect
    accepted = set(inspect.signature(METHODS[method].__init__).parameters)
    explicit = {k for k in ("alpha", "delta_init", "clamp", "lamda1", "lamda2", "lamda3",
                            "mode") if getattr(args, "aaer_mode" if k == "mode" else k) is not None}
    ignored = sorted(k for k in explicit if k not in accepted)
    if ignored:
        raise UsageError(f"--method {method} does not take {', '.join(ignored)}")
    hp = {k: v for k, v in hp.items() if v is not None and k in accepted}
    unknown = sorted(set(_parse_set(args.set)) - accepted)
    if unknown:
        raise UsageError(f"--set {', '.join(unknown)}: not a hyper-parameter of {method}; "
                         f"valid: {', '.join(sorted(accepted - {'self', 'eps'}))}")

    protocol = None if str(args.eval_protocol).lower() == "none" else args.eval_protocol
    epochs = args.epochs if args.epochs is not None else ds_defaults.get("epochs", 30)
    lr_max = args.lr_max if args.lr_max is not None else \
        getattr(cls, "train_overrides", {}).get("lr_max", ds_defaults.get("lr_max", 0.2))
    if args.lr_max is None and "lr_max" in getattr(cls, "train_overrides", {}):
        notes.append(f"{method}: peak learning rate {lr_max} as its authors train "
                     "(--lr-max overrides)")
    replays = hp.get("replays", getattr(cls, "replays", 1))
    if replays > 1 and getattr(cls, "epoch_scale", 1.0) != 1.0:
        scaled = max(1, math.ceil(epochs / replays))
        notes.append(f"{method}: {epochs} epochs scaled by 1/{replays} replays to {scaled}, "
                     "so the total gradient work matches")
        epochs = scaled
    return TrainConfig(
        out_dir=args.out_dir, dataset=dataset, data_dir=args.data_dir, download=args.download,
        n_train=args.n_train, model=MODEL_ALIASES.get(args.model, args.model), method=method,
        method_hparams=hp, epsilon=args.epsilon,
        epochs=epochs,
        batch_size=args.batch_size, lr_schedule=args.lr_schedule, lr_min=args.lr_min,
        lr_max=lr_max,
        lr_peak=args.lr_peak if args.lr_peak is not None else ds_defaults.get("lr_peak", 0.5),
        momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
        device=args.device, precision=args.precision, eval_protocol=protocol,
        n_eval=args.n_eval, eval_batch_size=args.eval_batch_size,
        eval_precision=args.eval_precision, probe_n=args.probe_n,
        probe_steps=args.probe_steps, progress=not args.no_progress, overwrite=args.overwrite,
        notes=notes, **monitor_config_kwargs(args))


def cmd_train(args, seed_script: bool = False) -> int:
    from aaer.train import train
    if getattr(args, "resume", None):
        return cmd_resume(args)
    cfg = config_from_args(args, seed_script=seed_script)
    cfg.on_nan = args.on_nan or "stop"
    cfg.compile, cfg.channels_last = args.compile, args.channels_last
    cfg.validate()
    results = train(cfg)
    if os.environ.get("RANK", "0") != "0":        # torchrun: rank 0 alone reports
        return 0
    print(json.dumps({"out_dir": cfg.out_dir, **{k: v for k, v in results.items()
                                                   if k != "evaluation"}}, indent=None)[:2000])
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory, its model.pt, a "
                   "published lineage state dict (model.pth) or a .safetensors file written "
                   "by `aaer export`")
    p.add_argument("--dataset", default=None, help="default: the run's config.json, else cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--model", default=None, help="default: the run's config.json, else preactresnet18")
    p.add_argument("--epsilon", type=float, default=None, help="in 1/255 (default: the run's, else 8)")
    p.add_argument("--protocol", default="lineage", help="lineage, lineage-exact, wong, "
                   "gradalign-1k, quick, aaer (PGD-50-10 + AutoAttack standard)")
    p.add_argument("--n-eval", type=int, default=None, help="first N test points (overrides protocol)")
    p.add_argument("--pgd-steps", type=int, default=None)
    p.add_argument("--pgd-restarts", type=int, default=None)
    p.add_argument("--pgd-step", type=float, default=None, help="PGD step in 1/255 (default eps/4)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 256 on CPU, 1024 on CUDA")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (default: <run dir>/"
                   "eval_<protocol>.json, or eval_<protocol>.json here)")
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default=None, help="comma list from clean, fgsm, pgd, "
                   "autoattack (overrides the protocol's)")
    g.add_argument("--aa-version", default=None, choices=["standard", "rand", "plus", "custom"],
                   help="AutoAttack version (default: the protocol's, standard)")
    g.add_argument("--aa-attacks", default=None, help="with --aa-version custom: comma list "
                   "from apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square")
    g.add_argument("--aa-backend", default="native", choices=["native", "official"],
                   help="native: aaer.attacks.autoattack (resumable); official: the "
                   "`autoattack` package (fra31/auto-attack) if installed")
    g.add_argument("--eval-precision", default="fp32", choices=PRECISION_CHOICES,
                   help="autocast for the attacks' forward passes (recorded when not fp32)")


def _run_config(checkpoint: str):
    d = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(d, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return d, json.load(f)
    return (d if os.path.isdir(checkpoint) else None), None


# -- reliability: resume, divergence, export (aaer.checkpoint, aaer.validate, aaer.export) --

RESUME_FLAGS = ("resume", "device", "data_dir", "download", "on_nan", "no_progress")


def add_reliability_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reliability")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint.pt, exactly where "
                        "it stopped; its settings come from its config.json (only --device, "
                        "--data-dir, --download, --on-nan and --no-progress may be given)")
    g.add_argument("--on-nan", choices=["stop", "skip-batch"], default=None,
                   help="non-finite loss: stop (default; exit code 3, the last good "
                        "checkpoint is kept) or skip-batch (skip that step; one host sync "
                        "per step)")


def explicit_flags(argv) -> set[str]:
    """The train flags given on the command line (not left at their defaults)."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_args(p)
    add_reliability_args(p)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    argv = list(argv)
    ns, _ = p.parse_known_args(argv[1:] if argv[:1] == ["train"] else argv)
    return set(vars(ns))


def cmd_resume(args) -> int:
    from aaer.checkpoint import resume
    given = explicit_flags(getattr(args, "argv", []))
    extra = sorted(given - set(RESUME_FLAGS))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise UsageError(f"--resume takes every setting from the run's config.json; {flags} "
                         f"cannot be given with it (valid with --resume: --device, "
                         f"--data-dir, --download, --on-nan, --no-progress)")
    results = resume(args.resume, device=args.device if "device" in given else None,
                     data_dir=args.data_dir, download=args.download or None,
                     on_nan=args.on_nan,
                     progress=False if args.no_progress else None)
    print(json.dumps({"out_dir": args.resume, **{k: v for k, v in results.items()
                                                 if k != "evaluation"}})[:2000])
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a finished run directory (model.pt, "
                   "config.json, results.json)")
    p.add_argument("--out", required=True, help="the .safetensors file to write; its "
                   "metadata go to the same name with .json")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")


def cmd_export(args) -> int:
    from aaer.export import export_run
    meta = export_run(args.run, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} and {meta['metadata_file']} ({meta['model']}, {meta['dataset']}, "
          f"sha256 {meta['sha256'][:16]}...)")
    return 0


def cmd_eval(args) -> int:
    import torch

    from aaer.data import load_dataset
    from aaer.evaluate import evaluate, format_table, get_protocol
    from aaer.io import atomic_write_json
    from aaer.models import build, load_state_dict_into
    from aaer.train import resolve_device

    run_dir, cfg = _run_config(args.checkpoint)
    ckpt = os.path.join(args.checkpoint, "model.pt") if os.path.isdir(args.checkpoint) \
        else args.checkpoint
    if not os.path.isfile(ckpt):
        raise UsageError(f"--checkpoint {args.checkpoint!r}: no such file (expected a run "
                         "directory with model.pt, a .pt/.pth state dict or an exported "
                         ".safetensors file)")
    exported = None
    if ckpt.endswith(".safetensors"):
        from aaer.export import read_exported
        exported_state, exported = read_exported(ckpt)
        cfg = {"dataset": exported["dataset"], "model": exported["model"],
               "epsilon": exported["epsilon"], "data_dir": exported.get("data_dir")}
    cfg = cfg or {}
    dataset = args.dataset or cfg.get("dataset") or "cifar10"
    model_name = MODEL_ALIASES.get(args.model, args.model) if args.model else \
        cfg.get("model", "preactresnet18")
    epsilon = args.epsilon if args.epsilon is not None else cfg.get("epsilon", 8.0)
    if not (0 < epsilon <= 255):
        raise UsageError(f"invalid --epsilon {epsilon!r}: must be in (0, 255] (1/255 units)")
    from aaer.validate import check_eval_settings
    check_eval_settings(epsilon=epsilon, protocol=args.protocol, n_eval=args.n_eval,
                        pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                        pgd_step=args.pgd_step, batch_size=args.batch_size or 1,
                        dataset=dataset, model=model_name)
    def split(v):
        return None if v is None else [a.strip() for a in v.split(",") if a.strip()]
    try:
        protocol = get_protocol(args.protocol, n_eval=args.n_eval, pgd_steps=args.pgd_steps,
                                pgd_restarts=args.pgd_restarts, pgd_step255=args.pgd_step,
                                attacks=split(args.attacks), aa_version=args.aa_version,
                                aa_attacks=split(args.aa_attacks))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if "autoattack" in protocol.attacks and args.aa_backend == "official":
        from aaer.evaluate import _official_autoattack
        try:
            _official_autoattack()
        except ValueError as e:
            raise UsageError(str(e)) from None
    device = resolve_device(args.device)
    data = load_dataset(dataset, args.data_dir or cfg.get("data_dir"), download=args.download)
    mean, std = data.mean, data.std
    if exported is not None:
        if exported["num_classes"] != data.num_classes:
            raise UsageError(f"{ckpt} was trained with {exported['num_classes']} classes, "
                             f"the data set {dataset} has {data.num_classes}; valid: "
                             f"--dataset {exported['dataset']} (or one with as many classes)")
        mean, std = exported["mean"], exported["std"]   # the normalisation it was trained with
    model = build(model_name, data.num_classes, data.in_channels, data.image_size, mean, std)
    if exported is not None:
        state = exported_state
    else:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or pickled code
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"--checkpoint {ckpt!r} cannot be loaded with torch.load("
                             f"weights_only=True): {msg}; valid: a state dict or an aaer "
                             "checkpoint") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]                      # a training checkpoint
    try:
        load_state_dict_into(model.net, state)
    except ValueError as e:
        raise UsageError(f"--checkpoint {ckpt!r} does not fit --model {model_name} for "
                         f"{dataset} ({data.num_classes} classes, {data.in_channels} "
                         f"channels): {e}") from None
    model.to(device).eval()
    out = args.out or os.path.join(run_dir or ".", f"eval_{protocol.name}.json")
    # a killed AutoAttack resumes from here on the same command; deleted when it completes
    state = os.path.join(os.path.dirname(os.path.abspath(out)),
                         f"autoattack_state_{protocol.name}.pt")
    report = evaluate(model, data.test_x, data.test_y, epsilon / 255, protocol,
                      batch_size=args.batch_size, device=device, seed=args.seed,
                      precision=args.eval_precision, aa_backend=args.aa_backend,
                      aa_state_path=state)
    report["checkpoint"] = os.path.abspath(ckpt)
    report["model"] = model_name
    report["dataset"] = dataset
    print(format_table(report))
    atomic_write_json(out, report)
    print(f"results written to {out}")
    return 0


def cmd_list(what: str) -> int:
    if what == "methods":
        from aaer.methods import METHODS
        def kv(d):
            return ", ".join(f"{k}={v}" for k, v in d.items())
        for name, cls in METHODS.items():
            m = cls(8 / 255)
            c = m.cost()
            replays = f" x{m.replays} replays" if m.replays > 1 else ""
            print(f"{name:<10} fwd {c.forward} bwd {c.backward}{replays}"
                  f"{' double-backprop' if c.double_backprop else ''}  {cls.description} "
                  f"[{cls.source}]")
            for preset, hp in cls.presets.items():
                print(f"{'':<12}preset {preset}: {kv(hp)}")
            overrides = dict(getattr(cls, "train_overrides", {}))
            if getattr(m, "epoch_scale", 1.0) != 1.0:
                overrides["epochs"] = f"x{m.epoch_scale:g}"
            if overrides:
                print(f"{'':<12}training: {kv(overrides)}")
    elif what == "models":
        from aaer.models import list_models
        print("\n".join(list_models()))
    elif what == "datasets":
        from aaer.data import DATASETS
        print("\n".join(DATASETS))
    return 0


def add_reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="aaer-cifar10, aaer-cifar100, co-fixture, or a .json/.toml "
                   "suite file (a grid over datasets, models, methods, eps)")
    p.add_argument("--out", default=None, help="suite directory (default: runs/<suite>)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every run")
    p.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                   help="shrink the suite (fewer epochs, a data subset, a small model) to "
                        "exercise the pipeline on a CPU")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on CPU (one per GPU on CUDA)")
    p.add_argument("--data-dir", default=None, help="passed to every run")
    p.add_argument("--dry-run", action="store_true", help="print one command per run and exit")
    p.add_argument("--summary-only", action="store_true",
                   help="only (re)write summary.md/.csv from the finished runs")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="flags added to every run, quoted, e.g. --train-args '--device cuda'")


def cmd_reproduce(args) -> int:
    from aaer import reproduce as rp
    if args.jobs < 1:
        raise UsageError(f"invalid --jobs {args.jobs!r}: must be >= 1")
    import shlex
    extra = shlex.split(args.train_args)
    suite_name = os.path.splitext(os.path.basename(args.suite))[0]
    out = args.out or os.path.join("runs", suite_name)
    runs = rp.build_runs(args.suite, args.seeds, args.scale, args.data_dir, extra)
    if args.dry_run:
        print("\n".join(rp.dry_run_lines(runs, out)))
        return 0
    if not args.summary_only:
        counts = rp.execute(runs, out, jobs=args.jobs)
        print(f"runs: {counts['ok']} ok, {counts['failed']} failed, "
              f"{counts['skipped']} already finished")
    result = rp.write_summary(suite_name, runs, out)
    print(f"summary: {os.path.join(out, 'summary.md')} ({len(result['rows'])} finished runs)")
    return 0 if args.summary_only or counts["failed"] == 0 else 1


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to compare")
    p.add_argument("--out", default=None, help="where report.md and the PNGs go; not given: "
                   "the run directory for one run, the runs' common parent for several")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event "
                   "files to <out>/tensorboard/<run> (view: tensorboard --logdir <out>/tensorboard)")


def cmd_report(args) -> int:
    from aaer.report import co_text, write_report
    rep = write_report(args.run_dirs, args.out, tensorboard=args.tensorboard)
    for r in rep["runs"]:
        print(co_text(r).replace("**", ""))
    print(f"report: {rep['report']}")
    for p in rep["plots"]:
        print(f"plot:   {p}")
    if rep["tensorboard"]:
        print(f"tensorboard: tensorboard --logdir {rep['tensorboard']}")
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="runs/demo", help="where the two runs and the report go")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST .gz files; "
                   "not given: Debian's /usr/share/datasets/fashion-mnist")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST (MD5-"
                   "checked) into --data-dir if it is not there")
    p.add_argument("--seed", type=int, default=None, help="seed of both runs (default: the "
                   "fixture's demo seed, 2; the README's table has seeds 0-4)")
    p.add_argument("--jobs", type=int, default=None, help="runs trained side by side in "
                   "separate processes; not given: one per run, at most one per CPU core")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job; not "
                   "given: the CPU cores divided among the jobs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_demo(args) -> int:
    from aaer.demo import run_demo
    for flag, v in (("--jobs", args.jobs), ("--threads", args.threads)):
        if v is not None and v < 1:
            raise UsageError(f"invalid {flag} {v!r}: must be >= 1")
    if args.download and args.data_dir is None:
        args.data_dir = os.path.join("data", "fashion-mnist")
    from aaer.demo import DEMO_SEED
    seed = DEMO_SEED if args.seed is None else args.seed
    run_demo(args.out_dir, args.data_dir, args.download, seed,
             progress=not args.no_progress, jobs=args.jobs, threads=args.threads)
    return 0


def build_parser(prog: str = "aaer") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=_fmt(), description=(
        "Fast adversarial training without catastrophic overfitting (AAER and baselines)."))
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model", formatter_class=_fmt())
    add_train_args(t)
    add_reliability_args(t)
    e = sub.add_parser("eval", help="evaluate a checkpoint", formatter_class=_fmt())
    add_eval_args(e)
    r = sub.add_parser("reproduce", help="run a suite of experiments and summarise it",
                       formatter_class=_fmt())
    add_reproduce_args(r)
    for what in ("methods", "models", "datasets"):
        sub.add_parser(what, help=f"list registered {what}")
    x = sub.add_parser("export", help="write a finished run's weights as safetensors + JSON",
                       formatter_class=_fmt())
    add_export_args(x)
    r = sub.add_parser("report", help="report.md and plots comparing run directories",
                       formatter_class=_fmt())
    add_report_args(r)
    d = sub.add_parser("demo", help="see catastrophic overfitting on a CPU in minutes "
                       "(RS-FGSM vs RS-AAER on Fashion-MNIST)", formatter_class=_fmt(),
                       description="Train the CO fixture (Fashion-MNIST, small CNN, eps 70/255) "
                       "with RS-FGSM and RS-AAER, one seed each, then write report.md and "
                       "plots to --out-dir and print whether CO happened, in which run.")
    add_demo_args(d)
    return p


def main(argv=None, prog: str = "aaer", seed_script: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    if seed_script:
        argv = ["train"] + argv
    args = parser.parse_args(argv)
    args.argv = argv
    from aaer.checkpoint import EXIT_DIVERGED, TrainingInterrupted
    try:
        if args.command == "train":
            return cmd_train(args, seed_script=seed_script)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "demo":
            return cmd_demo(args)
        return cmd_list(args.command)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except FloatingPointError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:            # `aaer reproduce ... --dry-run | head`: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
