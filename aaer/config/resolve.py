"""From the settings a user gave to the run that trains: ``resolve`` and ``validate``.

Every door (the CLI, ``aaer.training.TrainConfig``, AAER.py, ``aaer demo``, ``aaer reproduce``)
builds a request (aaer.config.schema.RunConfig with the rest UNSET) and calls ``resolve``.
The precedence, highest first:

1. explicit settings: flags, keywords, a suite's line, a fixture (always win);
2. without a method, the seed script's rule: ``--clamp 1`` trains RS-AAER, ``--clamp 0``
   (its default) N-AAER, and the seed script's defaults fill alpha, delta_init, clamp and
   lamda1-3 (SPEC §4);
3. the method's published table (AAER: lamda2 and lamda3 for the data set and eps, used
   when neither is given);
4. the method's preset: ``--preset``, or ``<dataset>-eps<N>`` when the method has one;
5. the method's changes to training (GradAlign: peak lr 0.3);
6. the data set's defaults (SVHN: 15 epochs, peak lr 0.05 at 2/5, a 5-epoch warm-up);
7. the schema's defaults, and for method hyper-parameters the method's own.
Last, the method's epoch rule turns epochs into the passes it trains (Free-AT: epochs / m
replays, rounded up, as its authors do), also for explicit epochs.

The resolved run's ``sources`` say where each value came from, e.g. ``"method.lamda2":
"published cifar10 eps 16"``, ``"optim.epochs": "dataset svhn"``; config.json keeps them.
``validate`` checks a whole run (each setting and the rules between settings); it runs at
the end of ``resolve`` and on every run read back from a config.json.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from aaer.config.schema import FLAT, METHOD_KEYWORDS, SETTINGS, RunConfig
from aaer.config.settings import UNSET, Source, settings_of
from aaer.errors import UsageError
from aaer.threat import check_l2_radius

EXPLICIT = Source("explicit", Source.EXPLICIT)
DEFAULT = Source("default", Source.DEFAULT)
METHOD_DEFAULT = Source("method default", Source.METHOD_DEFAULT)


def _flag(path: str) -> str:
    return SETTINGS[path].flag


def _check_given(cfg: RunConfig, custom_data: bool) -> None:
    for path, s, v in cfg.items():
        if v is UNSET or (custom_data and path == "data.dataset"):
            continue
        cfg.set(path, s.check(v))


def method_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The method's constructor keywords of a resolved run."""
    kw = {k: cfg.get(p) for k, p in METHOD_KEYWORDS.items() if cfg.get(p) is not None}
    kw.update(cfg.method.options)
    return kw


# The leaves (methods, data sets) are imported where they are used: resolving needs torch,
# the schema and every `--help` do not (aaer.config imports this module).

def build_method(name: str, eps: float, kwargs: dict[str, Any]):
    """The method, or UsageError naming the method and the settings it refused."""
    from aaer.methods import create_method
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        return create_method(name, eps, **kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid settings for --method {name} ({shown}): {e}") from None


def complete_method(cfg: RunConfig, kw: dict[str, tuple[Any, str]] | None = None,
                    sources: dict[str, str] | None = None):
    """Build the method from ``kw`` (keyword -> (value, source); None: the settings cfg
    holds) and write every hyper-parameter it takes into cfg's method settings, with its
    source into ``sources``. Returns the method."""
    if kw is None:
        label = Source("given", Source.EXPLICIT)
        kw = {k: (cfg.get(p), label) for k, p in METHOD_KEYWORDS.items()
              if cfg.get(p) not in (UNSET, None)}
        options = cfg.method.options if cfg.method.options is not UNSET else {}
        kw.update({k: (v, label) for k, v in options.items()})
    from aaer.methods import METHODS
    sources = cfg.sources if sources is None else sources
    name = cfg.method.name
    accepted = set(METHODS[name].keywords())
    method = build_method(name, cfg.eps, {k: v for k, (v, _) in kw.items()})
    full = {k: v for k, v in method.hparams().items() if k != "eps"}
    for k, path in METHOD_KEYWORDS.items():
        cfg.set(path, full.pop(k, None))
        sources[path] = kw[k][1] if k in kw else (
            METHOD_DEFAULT if k in accepted else Source(f"not used by {name}", Source.NOT_USED))
    cfg.method.options = full
    sources["method.options"] = Source("by key (method.options.<key>)", Source.BY_KEY)
    for k in full:
        sources[f"method.options.{k}"] = kw[k][1] if k in kw else METHOD_DEFAULT
    return method


def _given_source(label) -> Source:
    """The source of a setting a request gave: its label (a Source, or the text of a labelled
    request such as a fixture's), else explicit."""
    if label is None:
        return EXPLICIT
    return label if isinstance(label, Source) else Source(label, Source.REQUEST)


def resolve(request: RunConfig, *, custom_data: bool = False) -> RunConfig:
    """The resolved, validated run of ``request`` (see the module docstring).

    ``custom_data``: the data set is a Dataset object the caller passes to training, so
    ``data.dataset`` is its free-form name rather than one of aaer's data sets.
    """
    from aaer.data.datasets import training_defaults
    from aaer.methods import METHODS
    from aaer.methods.aaer import SEED_DEFAULTS, seed_method
    cfg = request.copy()
    sources = {p: _given_source(request.sources.get(p)) for p in request.given()}
    _check_given(cfg, custom_data)

    def fill(path: str, value, source: str) -> None:
        if cfg.get(path) is UNSET:
            cfg.set(path, value)
            sources[path] = source

    fill("data.dataset", SETTINGS["data.dataset"].default, DEFAULT)
    fill("method.epsilon", SETTINGS["method.epsilon"].default, DEFAULT)
    dataset, eps255 = cfg.data.dataset, cfg.method.epsilon

    # the method's keywords given by the user: the typed settings, then --set
    kw: dict[str, tuple[Any, str]] = {}
    typed = {k: cfg.get(p) for k, p in METHOD_KEYWORDS.items()
             if cfg.get(p) not in (UNSET, None)}
    options = cfg.method.options if cfg.method.options is not UNSET else {}
    both = sorted(set(typed) & set(options))
    if both:
        raise UsageError(f"{', '.join(_flag(METHOD_KEYWORDS[k]) for k in both)} given twice: "
                         f"as a flag and in --set; valid: one of the two")
    for k, v in typed.items():
        kw[k] = (v, sources[METHOD_KEYWORDS[k]])
    for k, v in options.items():
        kw[k] = (v, sources.get("method.options", EXPLICIT))

    # 2. no method: the seed script's rule
    name = cfg.method.name
    if name is UNSET or name is None:
        for k, v in SEED_DEFAULTS.items():
            kw.setdefault(k, (v, Source("seed script default", Source.SEED_SCRIPT)))
        clamp = kw["clamp"][0]
        cfg.method.name = name = seed_method(clamp)
        sources["method.name"] = Source(f"seed script: --clamp {clamp}", Source.SEED_SCRIPT)
    cls = METHODS[name]
    accepted = set(cls.keywords())
    refused = sorted(k for k in typed if k not in accepted)
    if refused:
        raise UsageError(f"--method {name} does not take "
                         f"{', '.join(_flag(METHOD_KEYWORDS[k]) for k in refused)}; "
                         f"it takes: {', '.join(sorted(accepted)) or 'nothing'}")
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(f"--set {', '.join(unknown)}: not a hyper-parameter of {name}; "
                         f"valid: {', '.join(sorted(accepted))}")

    # 3. the published table, when none of its values is given
    norm = kw.get("norm", ("linf", DEFAULT))[0]
    published = cls.published(dataset, eps255, norm)
    if published is not None and not set(published[0]) & set(kw):
        values, source = published
        kw.update({k: (v, Source(source, Source.PUBLISHED)) for k, v in values.items()})

    # 4. the preset: named, or <dataset>-eps<N> when the method has one
    preset = cfg.method.preset
    auto = f"{dataset}-eps{round(eps255)}" if norm == "linf" else None
    if preset is UNSET or preset is None:
        preset = auto if auto in cls.presets else None
        cfg.method.preset = preset
        sources["method.preset"] = Source("automatic for the data set and eps",
                                          Source.PRESET) if preset else DEFAULT
    if preset is not None:
        if preset not in cls.presets:
            raise UsageError(f"--preset {preset!r} is not a preset of {name}; valid: "
                             f"{', '.join(cls.presets) or 'none'}")
        for k, v in cls.presets[preset].items():
            kw.setdefault(k, (v, Source(f"preset {name} {preset}", Source.PRESET)))

    # 5. the method's changes to training, 6. the data set's defaults
    for k, v in cls.train_overrides.items():
        fill(f"optim.{k}", v, Source(f"method {name}", Source.METHOD))
    by_dataset = Source(f"dataset {dataset}", Source.DATASET)
    for k, v in training_defaults(dataset).items():
        if k in METHOD_KEYWORDS:
            if k in accepted:
                kw.setdefault(k, (v, by_dataset))
        else:
            fill(FLAT[k][0], v, by_dataset)

    # OneCycleLR's own warm-up share (torch's default pct_start, the FastAT Benchmark's)
    if cfg.optim.lr_schedule == "onecycle":
        fill("optim.lr_peak", 0.3, Source("onecycle: torch's pct_start", Source.RULE))
    # with a validation split, the model it selects is evaluated too unless said otherwise
    if cfg.data.val_n not in (UNSET, 0):
        fill("evaluation.select", "best-val-pgd", Source("--val-n is on", Source.RULE))
    # with an averaged model, it is what is evaluated unless said otherwise
    if cfg.optim.weight_average not in (UNSET, 0, 0.0):
        fill("evaluation.model", "averaged",
             Source("--weight-average is on", Source.RULE))

    # 7. the schema's defaults
    for path, s, v in cfg.items():
        if v is UNSET:
            fill(path, s.default, DEFAULT)

    # the method with everything it takes
    method = complete_method(cfg, kw, sources)
    epochs = method.epochs_for(cfg.optim.epochs)
    # a run's config.json given as a recipe holds the epochs the rule already gave
    if epochs != cfg.optim.epochs and sources["optim.epochs"].kind != Source.RUN_CONFIG:
        sources["optim.epochs"] = Source(f"{sources['optim.epochs']} {cfg.optim.epochs}, "
                                         f"trained as {epochs} ({method.epochs_rule})",
                                         Source.METHOD)
        cfg.optim.epochs = epochs
    cfg.sources = {}                                 # in schema order, as config.json lists them
    for path, _, _ in cfg.items():
        cfg.sources[path] = sources[path]
        if path == "method.options":
            cfg.sources.update({p: v for p, v in sources.items()
                                if p.startswith("method.options.")})
    validate(cfg, custom_data=custom_data)
    return cfg


def checked(request):
    """A command's request (a settings dataclass, what was not given UNSET) with every given
    value checked: bad input is refused before any file is read."""
    return dataclasses.replace(request, **{name: s.check(getattr(request, name))
                                           for name, s in settings_of(request)
                                           if getattr(request, name) is not UNSET})


def resolve_eval(request, known: dict[str, tuple[Any, Source]]):
    """The settings of ``aaer eval`` (aaer.config.commands.EvalCommand with what was not
    given UNSET): explicit settings, then what the model's own files say (``known``:
    name -> (value, Source), from a run's config.json or an export's metadata), then the
    schema's defaults. Returns (settings, name -> Source); every value checked."""
    from aaer.config.commands import EvalCommand
    request = checked(request)
    values, sources = {}, {}
    for name, s in settings_of(EvalCommand):
        v = getattr(request, name)
        if v is not UNSET:
            src = EXPLICIT
        elif name in known:
            v, src = known[name]
        elif s.required:
            raise UsageError(f"{s.flag} is required")
        else:
            v, src = s.default, DEFAULT
        values[name], sources[name] = s.check(v), src
    check_l2_radius(values["epsilon"], values["norm"])
    return dataclasses.replace(request, **values), sources


def validate(cfg: RunConfig, *, custom_data: bool = False) -> None:
    """Check a whole resolved run; ValueError naming the bad setting and what is valid."""
    for path, s, v in cfg.items():
        if v is UNSET:
            raise ValueError(f"{s.flag} ({path}) is not set: resolve the run first "
                             "(aaer.config.resolve)")
        if not (custom_data and path == "data.dataset"):
            cfg.set(path, s.check(v))
    o, m = cfg.optim, cfg.monitor
    check_l2_radius(cfg.method.epsilon, cfg.method.norm)
    if o.lr_max < o.lr_min:
        raise UsageError(f"invalid --lr-max/--lr-min {(o.lr_max, o.lr_min)!r}: need "
                         "lr-max > 0 and 0 <= lr-min <= lr-max")
    if m.co_min_drop > m.co_drop:
        raise UsageError(f"invalid --co-min-drop {m.co_min_drop!r}: must be in [0, --co-drop "
                         f"{m.co_drop:g}]")
    if m.on_co != "warn" and not m.probe_n:
        raise UsageError(f"--on-co {m.on_co} needs the CO probe: set --probe-n N (e.g. 500)")
    if cfg.runtime.compile_mode != "default" and not cfg.runtime.compile:
        raise UsageError(f"--compile-mode {cfg.runtime.compile_mode} is a mode of "
                         "torch.compile: give --compile too (or leave --compile-mode default)")
    if m.probe_every and not m.probe_n:
        raise UsageError(f"--probe-every {m.probe_every} needs the CO probe: set --probe-n N")
    method = build_method(cfg.method.name, cfg.eps, method_kwargs(cfg))
    method.set_label_smoothing(o.label_smoothing)      # refused by own-smoothing methods
    if m.on_co == "rollback":
        method.strengthen_target(m.rollback_change)
    if cfg.evaluation.select == "best-val-pgd" and not cfg.data.val_n:
        raise UsageError("--select best-val-pgd needs a validation split: set --val-n N (e.g. "
                         "1000)")
    if not o.weight_average:
        if cfg.evaluation.model == "averaged":
            raise UsageError("--eval-model averaged needs the averaged model: set "
                             "--weight-average TAU (e.g. 0.9995)")
        if method.uses_averaged_model:
            raise UsageError(f"--method {cfg.method.name} trains with the averaged model: set "
                             "--weight-average TAU (e.g. 0.9995)")
