"""The Python door to training: ``train``, ``resume`` and the flat ``TrainConfig``.

    from aaer.training import TrainConfig, train
    train(TrainConfig(method="rs-aaer", epsilon=16, dataset="cifar10"))

``train`` takes a ``TrainConfig`` (flat keywords, the API of aaer 0.1), an
``aaer.config.RunConfig`` request, or a resolved RunConfig. Requests go through
``aaer.config.resolve`` exactly as the CLI's flags do, so the same settings train the same
run whichever door they come in by. Before anything is written: the settings are
checked (the schema), the run directory's state (aaer.runs), then the data (preflight).
"""
from __future__ import annotations

from typing import Any

from aaer.config import FLAT, RunConfig, from_flat, resolve, validate
from aaer.config.settings import UNSET, Source
from aaer.engine import Trainer
from aaer.engine.preflight import check_data, check_data_dir, check_resume
from aaer.errors import DamagedFile, UsageError
from aaer.evaluation import evaluate, format_table, get_protocol
from aaer.monitor import build_monitor
from aaer.selection import build_validator
from aaer.threat import pixel_eps
from aaer.reporting.tensorboard import LiveWriter
from aaer.reporting.wandb import WandbListener, require_wandb
from aaer.runs import CHECKPOINT, RunDir


class TrainConfig:
    """The flat settings of one run (aaer 0.1's API) over the schema.

    Every keyword is a setting of aaer.config.schema by its flat name (``epochs``,
    ``lamda3``, ``probe_n``, ``eval_protocol``, ...; ``method_hparams`` for any method
    hyper-parameter). Settings not given are UNSET until ``resolve()`` fills them in by the
    published tables, presets and data-set defaults, as the CLI does.
    """

    def __init__(self, **settings: Any):
        object.__setattr__(self, "request", from_flat(settings))

    @classmethod
    def from_request(cls, request: RunConfig) -> "TrainConfig":
        cfg = cls()
        object.__setattr__(cfg, "request", request)
        return cfg

    def __getattr__(self, name: str):
        """A setting by its flat name: the value given, else the value resolve() gives it."""
        if name not in FLAT and name != "method_hparams":
            raise AttributeError(f"TrainConfig has no setting {name!r}; valid: "
                                 f"{', '.join(sorted(FLAT))}")
        if name == "method_hparams":
            return {k: v for k, v in self.request.method.options.items()} \
                if self.request.method.options is not UNSET else {}
        path = FLAT[name][0]
        value = self.request.get(path)
        if value is UNSET:
            try:
                value = self.resolve(custom_data=True).get(path)
            except (ValueError, TypeError):
                value = FLAT[name][1].default
        return value

    def __setattr__(self, name: str, value) -> None:
        if name not in FLAT and name != "method_hparams":
            raise AttributeError(f"TrainConfig has no setting {name!r}; valid: "
                                 f"{', '.join(sorted(FLAT))}")
        patch = from_flat({name: value})
        for path, v in patch.given().items():
            self.request.set(path, v)

    def __repr__(self) -> str:
        given = ", ".join(f"{FLAT_NAME[p]}={v!r}" for p, v in self.request.given().items())
        return f"TrainConfig({given})"

    @property
    def eps(self) -> float:
        """The radius in pixel units (--epsilon is in 1/255 for L-inf, pixels for L2)."""
        return pixel_eps(self.epsilon, self.norm)

    def resolve(self, *, custom_data: bool = False) -> RunConfig:
        """The run these settings train (aaer.config.resolve)."""
        return resolve(self.request, custom_data=custom_data)

    def validate(self) -> None:
        self.resolve()


FLAT_NAME = {path: name for name, (path, _) in FLAT.items()}


def as_run(cfg, *, custom_data: bool = False) -> RunConfig:
    """The resolved run of a TrainConfig, a RunConfig request or a resolved RunConfig."""
    if isinstance(cfg, TrainConfig):
        return cfg.resolve(custom_data=custom_data)
    if isinstance(cfg, RunConfig):
        if cfg.resolved and cfg.sources:
            out = cfg.copy()
            validate(out, custom_data=custom_data)
            return out
        return resolve(cfg, custom_data=custom_data)
    raise TypeError(f"train() takes a TrainConfig or an aaer.config.RunConfig, got "
                    f"{type(cfg).__name__}")


def final_evaluation(cfg: RunConfig, run: RunDir, dataset):
    """The evaluation after training, as the trainer calls it (None: --eval-protocol none)."""
    if cfg.evaluation.protocol is None:
        return None
    protocol = get_protocol(cfg.evaluation.protocol, norm=cfg.method.norm,
                            n_eval=cfg.evaluation.n_eval)

    def final_eval(model, device, log, shard=None, which: str = ""):
        """``which``: "" for the evaluated model, "selected" for the validation's choice."""
        # an interrupted AutoAttack resumes from this state on `aaer train --resume`
        state = run.aa_state(protocol.name + (f"-{which}" if which else ""))
        report = evaluate(model, dataset.test_x, dataset.test_y, cfg.eps, protocol,
                          batch_size=cfg.evaluation.batch_size, device=device,
                          seed=cfg.optim.seed, precision=cfg.evaluation.precision,
                          aa_state_path=state, shard=shard)
        if which:
            log.info("the %s model:", which)
        for line in format_table(report).splitlines():
            log.info(line)
        return report

    return final_eval


def build_trainer(cfg, dataset=None, *, resume: bool = False) -> Trainer:
    """A Trainer ready to ``fit()``: settings resolved and checked, the run directory's
    state checked, the data loaded and checked against the settings (and on resume against
    the checkpoint), the monitor and the final evaluation attached."""
    run_cfg = as_run(cfg, custom_data=dataset is not None)
    run = RunDir(run_cfg.runtime.out_dir)
    run.check_for(overwrite=run_cfg.runtime.overwrite, resume=resume)
    ckpt = run.read_checkpoint() if resume else None
    if dataset is None:
        check_data_dir(run_cfg)
        from aaer import data
        dataset = data.load_dataset(run_cfg.data.dataset, run_cfg.data.data_dir,
                                    download=run_cfg.data.download,
                                    image_size=run_cfg.data.image_size,
                                    workers=run_cfg.data.workers)
    check_data(run_cfg, dataset)
    # the images training may use: all but a validation split (--val-n), then the first
    # --n-train of them, less a held-out probe batch
    validator, pool_x, pool_y = build_validator(run_cfg, dataset)
    n = run_cfg.data.n_train
    train_x, train_y = (pool_x[:n], pool_y[:n]) if n is not None else (pool_x, pool_y)
    monitor, train_x, train_y = build_monitor(run_cfg, dataset, train_x, train_y,
                                              pool=(pool_x, pool_y))
    if ckpt is not None:
        check_resume(run_cfg, dataset, ckpt, (train_x, train_y))
    from aaer.errors import rank
    main = rank() == 0
    use_wandb = run_cfg.runtime.wandb and main
    if use_wandb:
        require_wandb()                     # before anything is written
    listeners = [LiveWriter(run.tensorboard_dir)] \
        if run_cfg.runtime.tensorboard and main else []
    trainer = Trainer(run_cfg, dataset, run, train_set=(train_x, train_y), monitor=monitor,
                      validator=validator, final_eval=final_evaluation(run_cfg, run, dataset),
                      listeners=listeners)
    try:
        if ckpt is not None:
            try:
                trainer.load_state(ckpt)
            except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
                if isinstance(e, DamagedFile):
                    raise
                raise DamagedFile(run.file(CHECKPOINT), f"does not hold a state this run can "
                                  f"continue from ({type(e).__name__}: {e})",
                                  "train the run again with its flags and --overwrite") \
                    from None
        # the W&B run starts once the run can train (a resume continues its W&B run)
        if use_wandb:
            trainer.listeners.append(WandbListener(run, run_cfg, resume=ckpt is not None))
    except BaseException:
        trainer.close()
        raise
    return trainer


def train(cfg, dataset=None, *, resume: bool = False) -> dict[str, Any]:
    """Train as configured; returns the results dict (also written to results.json).

    ``dataset``: a loaded aaer.data.Dataset to train on instead of loading
    ``data.dataset``. ``resume=True`` continues the run in the out-dir from its
    checkpoint.pt (see ``resume``).
    """
    return build_trainer(cfg, dataset, resume=resume).fit()


def resume(run_dir: str, *, dataset=None, **changes) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint.pt; returns its results.

    Every setting comes from the run's config.json; only the resumable ones (where the
    data live, the device, --on-nan, the progress bar, TensorBoard, W&B and its mode, the
    process-group timeout) may be changed, as flat keywords: ``resume(d, device="cuda")``.
    """
    run = RunDir(run_dir)
    run.check_for(overwrite=False, resume=True)
    cfg = run.settings(custom_data=dataset is not None)
    for name, value in changes.items():
        if value is None:
            continue
        if name not in FLAT or not FLAT[name][1].resumable:
            valid = ", ".join(sorted(n for n, (_, s) in FLAT.items() if s.resumable))
            raise UsageError(f"{name!r} cannot change when a run resumes; valid: {valid}")
        path, s = FLAT[name]
        cfg.set(path, s.check(value), Source("changed at resume", Source.RESUME))
    cfg.runtime.out_dir = run_dir
    return train(cfg, dataset, resume=True)
