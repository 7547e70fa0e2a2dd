"""The settings of one training run, as nested dataclasses, each setting defined once.

    RunConfig
      data        data set, where it lives, how much of it
      model       the network
      method      the training method, eps, its hyper-parameters and preset
      optim       epochs, batch, SGD and the learning-rate schedule, the seed
      evaluation  the evaluation after training
      monitor     the catastrophic-overfitting probe, rule and response
      runtime     run directory, device, precision, speed, progress, divergence policy

A ``RunConfig`` is either a *request* (settings a user gave; the rest UNSET) or a
*resolved* run (every setting filled in by ``aaer.config.resolve``, with ``sources``
saying where each value came from). Each setting has a flat name, its CLI dest and the
keyword of the flat ``aaer.training.TrainConfig`` (``epochs``, ``lamda3``, ``probe_n``, ...);
flags are ``--`` + the flat name with dashes unless a setting names its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aaer import catalog
from aaer.config.settings import UNSET, Setting, setting, settings_of
from aaer.errors import UsageError
from aaer.threat import NORMS, pixel_eps

# the registries' names come from aaer/catalog.py (generated from them, checked by a test),
# so that the schema, and with it every --help, needs no torch; the checks below read the
# live registries (a model or method registered at run time is valid)
PROTOCOLS = catalog.PROTOCOLS
DATASETS = catalog.DATASETS
AAER_MODES = catalog.AAER_MODES
DELTA_INITS = catalog.DELTA_INITS

SEED_MAX = 2 ** 32 - 1
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("cyclic", "multistep", "onecycle")
ON_NAN = ("stop", "skip-batch")
CHANNELS_LAST = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead")
SGD_IMPLS = ("auto", "for-loop", "foreach", "fused")
CO_RESPONSES = ("warn", "stop", "rollback")
CO_REFERENCES = ("best", "previous")
PROBE_SOURCES = ("test", "holdout")
ROLLBACK_CHANGES = ("auto", "step", "regularizer")
EVAL_MODELS = ("last", "averaged")
SELECTIONS = ("last", "best-val-pgd")
WANDB_MODES = ("online", "offline", "disabled")
# model names of the seed script and of published checkpoints
MODEL_ALIASES = {"PreActResNet18": "preactresnet18", "WideResNet": "wrn-34-10"}


def _model_name(name: str) -> str:
    from aaer.models.registry import check_model_name
    name = MODEL_ALIASES.get(name, name)
    check_model_name(name)
    return name


def _method_name(name):
    from aaer.methods import METHODS
    if name is not None and name not in METHODS:
        raise UsageError(f"unknown --method {name!r}; valid: {', '.join(METHODS)}")
    return name


def _protocol(name):
    if name is None or str(name).lower() == "none":
        return None
    if name not in PROTOCOLS:
        raise UsageError(f"unknown --eval-protocol {name!r}; valid: {', '.join(PROTOCOLS)}, "
                         "none")
    return name


def check_device(name: str) -> str:
    if name == "auto":
        return name
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"invalid --device {name!r}: use auto, cpu, cuda or cuda:N ({e})") \
            from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid --device {name!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r} asked for CUDA, but no CUDA device is available; "
                         "use --device cpu or auto")
    return name


def _dataset_name(name: str) -> str:
    from aaer.data.datasets import canonical_name
    return canonical_name(name)


def by_table(flat: str, default) -> str:
    """The help text of a default that data sets or methods change: the schema's value,
    then each table's (aaer/catalog.py's DEFAULTS_BY, read from the tables themselves)."""
    changes = catalog.DEFAULTS_BY.get(flat, [])
    return "; ".join([str(default)] + [f"{who} {value}" for who, value in changes])


@dataclass
class DataConfig:
    dataset: str = setting("cifar10", f"data set: {', '.join(DATASETS)} (AAER.py infers it "
                           "from --out-dir)", extra=_dataset_name)
    data_dir: str | None = setting(None, "where the data set lives (directory, release "
                                   "archive or .zip)", optional=True, resumable=True,
                                   default_text="./data/<dataset>, or Debian's path for "
                                   "fashion-mnist")
    download: bool = setting(False, "download the official archive (checksum-verified) if it "
                             "is not in --data-dir", type=bool, resumable=True)
    n_train: int | None = setting(None, "use only the first N training images", type=int,
                                  low=1, optional=True, default_text="all")
    val_n: int = setting(0, "hold the last N training images out as a validation set (never "
                         "trained on), validated every epoch (clean, FGSM, PGD-10 step 2/255) "
                         "for --select (FastAT Benchmark: 1000 on CIFAR; 0: none)", type=int,
                         low=0, older_runs=0)
    image_size: int | None = setting(None, "streamed images (imagenet100, or an imagefolder "
                                     "of mixed sizes): RandomResizedCrop to this size for "
                                     "training, Resize(size*8/7) + CenterCrop(size) for "
                                     "testing", type=int, low=8, optional=True,
                                     default_text=by_table(
                                         "image_size", "an imagefolder's own size, not "
                                         "streamed"), older_runs=None)
    workers: int | None = setting(None, "processes decoding streamed images (0: the training "
                                  "process itself)", type=int, low=0, optional=True,
                                  resumable=True, default_text="min(8, CPU cores)",
                                  older_runs=None)


@dataclass
class ModelConfig:
    name: str = setting("preactresnet18", "model name: a registered one (see `aaer models`; "
                        "PreActResNet18 and WideResNet are accepted as aliases), or " +
                        " or ".join(catalog.MODEL_FAMILIES), dest="model", extra=_model_name,
                        default_text=by_table("model", "preactresnet18"))
    kwargs: dict = setting({}, "an argument of a package.module:factory or timm:<name> model, "
                           "e.g. --model-arg width=64", type=dict, flag="--model-arg",
                           dest="model_args", metavar="KEY=VALUE", default_text="none",
                           older_runs={})
    normalization: str = setting("dataset", "what the model subtracts and divides its input "
                                 "by: the data set's mean/std, none (a network that "
                                 "normalises itself; the FastAT Benchmark's models), "
                                 "ImageNet's, or CIFAR-10's (the AAER recipe's, for a CIFAR-10 "
                                 "copy read as an imagefolder)", choices=catalog.NORMALIZATIONS,
                                 older_runs="dataset")


@dataclass
class MethodConfig:
    name: str | None = setting(None, "training method (see `aaer methods`)", dest="method",
                               optional=True, extra=_method_name,
                               default_text="rs-aaer if --clamp 1 else n-aaer, with the seed "
                               "script's defaults")
    epsilon: float = setting(8.0, "the threat model's radius, as each norm's literature "
                             "writes it: L-inf in 1/255 units (8 = 8/255), L2 in pixel units "
                             "(0.5; 128/255 = 0.502)", type=float, low=0, high=255,
                             low_open=True)
    norm: str = setting(None, "threat model of training (and of the evaluation after it): "
                        "linf or l2", choices=NORMS, optional=True, default_text="linf",
                        older_runs="linf")
    # the method hyper-parameters with a flag of their own (the seed script's); a method
    # that does not take one refuses it; its range is checked by the method itself
    alpha: float = setting(None, "attack step as a multiple of eps", type=float,
                           optional=True, default_text="the method's")
    delta_init: str = setting(None, "initial perturbation of single-step methods",
                              choices=DELTA_INITS, optional=True, default_text="the method's")
    clamp: int = setting(None, "1: RS variant (noise U(-eps,eps), projection); 0: N variant "
                         "(noise U(-2eps,2eps), no projection)", type=int, choices=(0, 1),
                         optional=True, default_text="the method's")
    lamda1: float = setting(None, "AAER: overall weight", type=float, optional=True,
                            default_text="1.0")
    lamda2: float = setting(None, "AAER: CE-variation weight", type=float, optional=True,
                            default_text="published for the data set and eps")
    lamda3: float = setting(None, "AAER: logit-variation weight", type=float, optional=True,
                            default_text="published for the data set and eps")
    mode: str = setting(None, "AAER: reference = the published code (CE term without "
                        "gradient); paper = CE term with gradient through l1", dest="aaer_mode",
                        choices=AAER_MODES, optional=True, default_text="reference")
    warmup_epochs: float = setting(None, "linear warm-up of the attack step over N epochs",
                                   type=float, optional=True,
                                   default_text=by_table("warmup_epochs", 0))
    preset: str | None = setting(None, "a method preset (see `aaer methods`); "
                                 "<dataset>-eps<N> presets apply by themselves when they exist",
                                 optional=True, default_text="none")
    options: dict = setting({}, "any other method hyper-parameter, e.g. --set lamda=0.5",
                            type=dict, flag="--set",
                            metavar="KEY=VALUE", default_text="none")


@dataclass
class OptimConfig:
    epochs: int = setting(30, "training epochs", type=int, low=1, aliases=("--epoch",),
                          default_text=by_table("epochs", 30))
    batch_size: int = setting(128, "batch size (under torchrun the global batch)", type=int,
                              low=1)
    lr_schedule: str = setting("cyclic", "learning-rate schedule: cyclic (PyTorch CyclicLR "
                               "with momentum cycling, per step), multistep (x0.1 at 1/2 and "
                               "3/4, per step), onecycle (PyTorch OneCycleLR over the epochs, "
                               "stepped once per epoch, momentum cycling 0.95/0.85: the FastAT "
                               "Benchmark's)", choices=LR_SCHEDULES)
    lr_min: float = setting(0.0, "lowest learning rate", type=float, low=0)
    lr_max: float = setting(0.2, "peak learning rate", type=float, low=0, low_open=True,
                            default_text=by_table("lr_max", 0.2))
    lr_peak: float = setting(0.5, "cyclic and onecycle: where the peak is, as a fraction of "
                             "training",
                             type=float, low=0, high=1, low_open=True, high_open=True,
                             default_text=by_table("lr_peak", "0.5 (onecycle 0.3)"))
    momentum: float = setting(0.9, "SGD momentum", type=float, low=0, high=1, high_open=True)
    weight_decay: float = setting(5e-4, "SGD weight decay", type=float, low=0)
    seed: int = setting(0, "seeds python, numpy, torch and the data order", type=int, low=0,
                        high=SEED_MAX)
    weight_average: float = setting(0.0, "keep an averaged model: an EMA of every weight and "
                                    "BatchNorm statistic after each optimiser step, with "
                                    "this decay tau (FastAT Benchmark: 0.9995; 0: off)",
                                    type=float, low=0, high=1, high_open=True, metavar="TAU",
                                    older_runs=0.0)
    label_smoothing: float = setting(0.0, "label smoothing S of every cross-entropy on the "
                                     "true labels in the method's step, its attack's loss and "
                                     "regulariser's as well as its training loss: target (1-S) "
                                     "one-hot + S/K, PyTorch's; evaluation, validation and the "
                                     "CO probe stay unsmoothed; methods that smooth their "
                                     "labels themselves refuse it (FastAT Benchmark: 0.4; 0: "
                                     "off)", type=float, low=0, high=1, high_open=True,
                                     metavar="S", older_runs=0.0)


@dataclass
class EvalConfig:
    protocol: str | None = setting("lineage", "evaluation after training (see `aaer eval "
                                   "--help`); none to skip", dest="eval_protocol",
                                   optional=True, extra=_protocol)
    n_eval: int | None = setting(None, "evaluate on the first N test points", type=int, low=1,
                                 optional=True, default_text="the protocol's")
    batch_size: int | None = setting(None, "final evaluation and probe batch",
                                     dest="eval_batch_size", type=int, low=1, optional=True,
                                     default_text="256 on CPU, 1024 on CUDA")
    precision: str = setting("fp32", "final evaluation under autocast (recorded in "
                             "results.json); fp32: the reference", dest="eval_precision",
                             choices=PRECISIONS)
    model: str = setting("last", "the model the CO probe, the final evaluation and model.pt "
                         "use: the last weights, or the averaged model (--weight-average)",
                         dest="eval_model", choices=EVAL_MODELS,
                         default_text="averaged with --weight-average, else last",
                         older_runs="last")
    select: str = setting("last", "the model selected for a second final evaluation: the last "
                          "epoch's, or the best on the validation split by PGD accuracy (ties: "
                          "clean accuracy), among the last and the averaged weights (FastAT "
                          "Benchmark)", choices=SELECTIONS,
                          default_text="best-val-pgd with --val-n, else last",
                          older_runs="last")


@dataclass
class MonitorConfig:
    probe_n: int = setting(0, "per-epoch clean/FGSM/PGD probe on N held-out points (0: off); "
                           "turns the catastrophic-overfitting monitor on", type=int, low=0)
    probe_steps: int = setting(10, "PGD steps of the probe", type=int, low=1)
    probe_source: str = setting("test", "probe batch: the first N test points, or N training "
                                "images held out of training", choices=PROBE_SOURCES)
    probe_every: int = setting(0, "also probe every STEPS optimiser steps (0: once per epoch)",
                               type=int, low=0, metavar="STEPS")
    on_co: str = setting("warn", "response to CO: log it; stop with the best probe's weights; "
                         "or roll the whole training state back to the best probe (the "
                         "start, if none) and train on with a stronger method",
                         choices=CO_RESPONSES)
    co_drop: float = setting(0.2, "CO when probe PGD accuracy falls more than this below the "
                             "reference", type=float, low=0, high=1, low_open=True,
                             high_open=True)
    co_reference: str = setting("best", "the reference: best probe so far, or the probe before "
                                "the drop (Wong et al.)", choices=CO_REFERENCES)
    co_fgsm_ratio: float = setting(0.5, "... while probe FGSM accuracy fell by less than this "
                                   "times the PGD fall since the reference (0: not checked)",
                                   type=float, low=0, high=1)
    co_rel_drop: float = setting(0.75, "... or by more than this fraction of the reference, "
                                 "whichever is smaller (0: off)", type=float, low=0, high=1)
    co_min_drop: float = setting(0.05, "the relative threshold is never below this (at most "
                                 "--co-drop)", type=float, low=0, high=1)
    co_gap: float = setting(0.25, "also CO: probe FGSM accuracy at least this above a PGD "
                            "accuracy that is <= --co-floor (0: off)", type=float, low=0, high=1)
    co_floor: float = setting(0.05, "PGD accuracy at or below which --co-gap applies",
                              type=float, low=0, high=1, high_open=True)
    co_patience: int = setting(2, "consecutive probes that must meet the rule (Wong et al.: 1)",
                               type=int, low=1)
    rollback_change: str = setting("auto", "what a rollback changes (auto: the method's own "
                                   "choice: a regulariser's weight -- AAER's lamda1, "
                                   "GradAlign's and ELLE's lamda -- else the step alpha)",
                                   choices=ROLLBACK_CHANGES)
    rollback_step_factor: float = setting(0.75, "rollback: alpha is multiplied by this",
                                          type=float, low=0, high=1, low_open=True,
                                          high_open=True)
    rollback_reg_factor: float = setting(2.0, "rollback: the regulariser's weight is "
                                         "multiplied by this",
                                         type=float, low=1, low_open=True)
    max_rollbacks: int = setting(2, "after this many rollbacks the next CO stops the run",
                                 type=int, low=0)
    aae_per_class: bool = setting(False, "also log the AAE count and fraction per class",
                                  type=bool)


@dataclass
class RuntimeConfig:
    out_dir: str = setting("train_aaer_output", "the run directory")
    overwrite: bool = setting(False, "replace a finished or unfinished run in --out-dir",
                              type=bool)
    device: str = setting("auto", "auto (cuda if present), cpu, cuda, cuda:N", resumable=True,
                          extra=check_device)
    precision: str = setting("fp32", "fp32: the reference; bf16/fp16: autocast (fp16 with loss "
                             "scaling); losses, the AAE test and the regulariser stay fp32",
                             choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the model (methods needing double backprop "
                            "run eagerly)", type=bool)
    compile_mode: str = setting("default", "with --compile: torch.compile's mode; default "
                                "(kernel fusion) or reduce-overhead (also CUDA graphs of the "
                                "fixed-shape step: CUDA only)", choices=COMPILE_MODES,
                                older_runs="default")
    sgd_impl: str = setting("auto", "SGD's implementation: auto (torch's own choice: foreach "
                            "on CUDA, for-loop on CPU), for-loop (one parameter at a time), "
                            "foreach (multi-tensor kernels) or fused (one fused kernel); the "
                            "same update up to float rounding", choices=SGD_IMPLS,
                            older_runs="auto")
    channels_last: str = setting("auto", "NHWC memory format; auto: on for conv nets on CUDA",
                                 choices=CHANNELS_LAST)
    progress: bool = setting(True, "a progress bar per epoch", type=bool, negate="--no-progress",
                             resumable=True)
    on_nan: str = setting("stop", "non-finite loss: stop (exit code 3, the last good "
                          "checkpoint is kept) or skip-batch (skip that step; one host sync "
                          "per step)", choices=ON_NAN, resumable=True)
    dist_timeout: float = setting(600.0, "under torchrun: seconds a collective may wait for "
                                  "the other processes before the run fails", type=float,
                                  low=0, low_open=True, resumable=True)
    tensorboard: bool = setting(False, "write TensorBoard events to <out-dir>/tensorboard while "
                                "training, once per epoch and probe (needs the tensorboard "
                                "package)", type=bool, resumable=True)
    wandb: bool = setting(False, "log the run to Weights & Biases while training: every "
                          "epoch's metrics, every CO probe (by optimiser step), CO events, "
                          "the final evaluation and the settings with their sources; a "
                          "resumed run continues the same W&B run (needs the wandb package)",
                          type=bool, resumable=True, older_runs=False)
    wandb_project: str = setting("aaer", "--wandb: the W&B project (fixed when the run "
                                 "starts: a resume continues the same W&B run)",
                                 default_text="$WANDB_PROJECT, else aaer", older_runs="aaer")
    wandb_entity: str | None = setting(None, "--wandb: the W&B entity (user or team)",
                                       optional=True, default_text="$WANDB_ENTITY, else your "
                                       "W&B default entity", older_runs=None)
    wandb_mode: str = setting("online", "--wandb: online (stream to the W&B server), offline "
                              "(write <out-dir>/wandb, or $WANDB_DIR, only; upload later with "
                              "`wandb sync`) or disabled (log nothing)", choices=WANDB_MODES,
                              resumable=True, default_text="$WANDB_MODE, else online",
                              older_runs="online")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig,
            "optim": OptimConfig, "evaluation": EvalConfig, "monitor": MonitorConfig,
            "runtime": RuntimeConfig}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # request: the label of each given setting ("explicit" when absent); resolved: the
    # source of every setting ("default", "published cifar10 eps 16", "dataset svhn", ...)
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def eps(self) -> float:
        """The radius in pixel units (method.epsilon is in 1/255 for L-inf)."""
        return pixel_eps(self.method.epsilon, self.method.norm)

    @property
    def resolved(self) -> bool:
        return all(v is not UNSET for _, _, v in self.items())

    def items(self):
        """(path, Setting, value) for every setting, e.g. ("optim.epochs", <Setting>, 30)."""
        for section in SECTIONS:
            obj = getattr(self, section)
            for name, s in settings_of(obj):
                yield f"{section}.{name}", s, getattr(obj, name)

    def get(self, path: str):
        section, name = path.split(".")
        return getattr(getattr(self, section), name)

    def set(self, path: str, value, source: str | None = None) -> None:
        section, name = path.split(".")
        setattr(getattr(self, section), name, value)
        if source is not None:
            self.sources[path] = source

    def given(self) -> dict[str, Any]:
        """path -> value of the settings that are not UNSET."""
        return {p: v for p, _, v in self.items() if v is not UNSET}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict of the settings (no sources)."""
        return {section: {name: _plain(getattr(getattr(self, section), name))
                          for name, _ in settings_of(getattr(self, section))}
                for section in SECTIONS}

    def flat(self) -> dict[str, Any]:
        """flat name -> value (the TrainConfig keywords / CLI dests)."""
        return {s.dest: _plain(v) for _, s, v in self.items()}

    def copy(self) -> "RunConfig":
        return RunConfig(**{k: dataclasses.replace(getattr(self, k)) for k in SECTIONS},
                         sources=dict(self.sources))


def _plain(v):
    return dict(v) if isinstance(v, dict) else v


def _index() -> dict[str, tuple[str, Setting]]:
    out = {}
    for section, cls in SECTIONS.items():
        for name, s in settings_of(cls):
            assert s.dest not in out, f"flat name {s.dest} defined twice"
            out[s.dest] = (f"{section}.{name}", s)
    return out


# flat name -> (path, Setting): the one table from keyword/flag to setting
FLAT: dict[str, tuple[str, Setting]] = _index()
# path -> Setting
SETTINGS: dict[str, Setting] = {path: s for path, s in FLAT.values()}
# method settings with a flag of their own, by the method's keyword
METHOD_KEYWORDS = {name: f"method.{name}" for name, _ in settings_of(MethodConfig)
                   if name not in ("name", "epsilon", "preset", "options")}


def from_flat(settings: dict[str, Any], source: str | None = None) -> RunConfig:
    """A request from flat keywords (``epochs=8, lamda3=1.5, probe_n=500``).

    ``method_hparams`` (the flat API's dict of method keywords) is split into the method
    settings that have a flag of their own and ``method.options``. ``source``: the label
    of every given setting (None: "explicit").
    """
    cfg = RunConfig()
    settings = dict(settings)
    hp = dict(settings.pop("method_hparams", None) or {})
    for k in ("notes", "eps"):       # written by aaer 0.1 into config.json; derived now
        settings.pop(k, None)
    unknown = sorted(set(settings) - set(FLAT))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(FLAT))}")
    for key, value in settings.items():
        path, _ = FLAT[key]
        cfg.set(path, value, source)
    options = dict(cfg.method.options) if cfg.method.options is not UNSET else {}
    for k, v in hp.items():
        if k in METHOD_KEYWORDS and cfg.get(METHOD_KEYWORDS[k]) is UNSET:
            cfg.set(METHOD_KEYWORDS[k], v, source)
        else:
            options[k] = v
    if options:
        cfg.set("method.options", options, source)
    return cfg


def from_dict(nested: dict[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from ``to_dict()``'s nested form; unknown sections or settings raise
    ValueError naming them (``where``: the file, for the message)."""
    cfg = RunConfig()
    for section, values in nested.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise UsageError(f"{where}: unknown section {section!r}; valid: "
                             f"{', '.join(SECTIONS)}")
        names = dict(settings_of(SECTIONS[section]))
        for name, value in values.items():
            if name not in names:
                raise UsageError(f"{where}: unknown setting {section}.{name}; valid: "
                                 f"{', '.join(f'{section}.{n}' for n in names)}")
            setattr(getattr(cfg, section), name, value)
    return cfg
