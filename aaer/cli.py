"""Command line: `aaer train | eval | reproduce | demo | report | export | methods | models |
datasets`, generated from the settings (aaer.config): every flag, default and help text is
written once, in its setting.

`aaer train` takes the seed script's flags (--epsilon, --alpha, --delta-init, --clamp,
--lamda1/2/3, --epoch[s], ...) with the seed's meaning, so `python3 AAER.py ...` at the
repository root is `aaer train` with the data set inferred from the out-dir's name. Its
flags become a run request that aaer.config.resolve completes, as for every other door.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback

from aaer.config.commands import COMMANDS
from aaer.config.flags import (add_command_flags, add_run_flags, command_request,
                               command_settings, given)
from aaer.errors import (EXIT_BUG, EXIT_DIVERGED, EXIT_FAILED_RUNS, EXIT_USAGE,
                         TrainingInterrupted, UsageError, rank)

OUT_DIR_DATASETS = [(r"cifar-?100", "cifar100"), (r"cifar-?10", "cifar10"), (r"svhn", "svhn"),
                    (r"tiny", "tinyimagenet"), (r"imagenet-?_?100", "imagenet100"),
                    (r"imagenet", "imagefolder"),
                    (r"fashion", "fashion-mnist"), (r"mnist", "mnist")]


def infer_dataset(out_dir: str) -> str | None:
    name = os.path.basename(os.path.normpath(out_dir)).lower()
    for pattern, ds in OUT_DIR_DATASETS:
        if re.search(pattern, name):
            return ds
    return None


# -- train --------------------------------------------------------------------------------

def train_request(ns: argparse.Namespace, *, seed_script: bool = False):
    """The run request of `aaer train`'s flags (AAER.py: the data set from --out-dir)."""
    from aaer.config.flags import request_from_args
    from aaer.config.schema import SETTINGS
    from aaer.config.settings import UNSET
    request = request_from_args(ns)
    if getattr(ns, "config", None):             # a recipe file; the flags win over it
        from aaer.config.recipe import merge, request_from_file
        request = merge(request_from_file(ns.config), request)
    if seed_script and request.data.dataset is UNSET:
        out = request.runtime.out_dir
        out = SETTINGS["runtime.out_dir"].default if out is UNSET else out
        inferred = infer_dataset(out)
        if inferred:
            from aaer.config.settings import Source
            request.set("data.dataset", inferred,
                        Source(f"inferred from --out-dir {out!r} (pass --dataset to override)",
                               Source.INFERRED))
    return request


def config_from_args(ns: argparse.Namespace, *, seed_script: bool = False):
    """The flat TrainConfig of `aaer train`'s parsed flags (resolved when trained)."""
    from aaer.training import TrainConfig
    return TrainConfig.from_request(train_request(ns, seed_script=seed_script))


def _print_results(out_dir: str, results: dict) -> None:
    if rank() != 0:                                   # torchrun: rank 0 alone reports
        return
    print(json.dumps({"out_dir": out_dir, **{k: v for k, v in results.items()
                                             if k != "evaluation"}})[:2000])


def cmd_train(ns: argparse.Namespace, seed_script: bool = False) -> int:
    from aaer.training import train
    if getattr(ns, "resume", None):
        return cmd_resume(ns)
    request = train_request(ns, seed_script=seed_script)
    results = train(request)
    from aaer.config.schema import SETTINGS
    from aaer.config.settings import UNSET
    out = request.runtime.out_dir
    _print_results(SETTINGS["runtime.out_dir"].default if out is UNSET else out, results)
    _co_outcome(results)
    return 0


def cmd_config(ns: argparse.Namespace) -> int:
    """`aaer config show [--config FILE] [run flags]`: the resolved run as a YAML recipe."""
    from aaer.config import resolve
    from aaer.config.recipe import to_yaml
    print(to_yaml(resolve(train_request(ns))), end="")
    return 0


def _co_outcome(results: dict) -> None:
    """A run whose catastrophic overfitting was not rescued says so as it ends."""
    from aaer.runs import Outcome
    mon = results.get("monitor") or {}
    if rank() == 0 and "outcome_kind" in mon and Outcome(mon["outcome_kind"]).failed_rescue:
        print(f"aaer: catastrophic overfitting {mon['outcome']}", file=sys.stderr)


def cmd_resume(ns: argparse.Namespace) -> int:
    from aaer.config.schema import FLAT
    from aaer.training import resume
    values = given(ns)
    run_dir = values.pop("resume")
    resumable = [(n, s) for n, (_, s) in FLAT.items() if s.resumable]
    extra = sorted(k for k in values if k not in dict(resumable))
    if extra:
        flags = ", ".join(FLAT[k][1].flag if k in FLAT else "--" + k for k in extra)
        valid = ", ".join(s.negate or s.flag for _, s in resumable)
        raise UsageError(f"--resume takes every setting from the run's config.json; {flags} "
                         f"cannot be given with it (valid with --resume: {valid})")
    results = resume(run_dir, **values)
    _print_results(run_dir, results)
    _co_outcome(results)
    return 0


# -- eval --------------------------------------------------------------------------------

def cmd_eval(ns: argparse.Namespace) -> int:
    from aaer.assess import evaluate_checkpoint
    from aaer.config.commands import EvalCommand
    from aaer.evaluation import format_table
    report, out = evaluate_checkpoint(command_request(EvalCommand, ns))
    if report is not None:                   # torchrun: rank 0 alone reports
        print(format_table(report))
        print(f"results written to {out}")
        if report.get("model_card"):
            print(f"model card written to {report['model_card']}")
    return 0


# -- the other commands --------------------------------------------------------------------

def cmd_list(what: str) -> int:
    """`aaer methods | models | datasets`, from the catalog (aaer/catalog.py): no torch."""
    from aaer import catalog
    if what == "methods":
        print("\n".join(line for lines in catalog.METHOD_LINES.values() for line in lines))
    elif what == "models":
        print("\n".join(catalog.MODELS))
    elif what == "datasets":
        print("\n".join(catalog.DATASETS))
    return 0


def cmd_export(a) -> int:
    from aaer.export import export_run
    meta = export_run(a.run, a.out, overwrite=a.overwrite)
    print(f"wrote {a.out} and {meta['metadata_file']} ({meta['model']}, {meta['dataset']}, "
          f"sha256 {meta['sha256'][:16]}...)")
    return 0


def slurm_settings(a):
    from aaer.experiments.executors import SlurmSettings
    return SlurmSettings(partition=a.slurm_partition, account=a.slurm_account, qos=a.slurm_qos,
                         gpus_per_run=a.slurm_gpus_per_run, cpus_per_run=a.slurm_cpus_per_run,
                         mem_gb=a.slurm_mem_gb, time_min=a.slurm_time,
                         array_parallelism=a.slurm_array_parallelism,
                         signal_delay_s=a.slurm_signal_delay,
                         max_requeues=a.slurm_max_requeues, sbatch=a.slurm_sbatch,
                         setup=a.slurm_setup, runs_per_gpu=a.runs_per_gpu)


def cmd_reproduce(a) -> int:
    import shlex

    from aaer.experiments import reproduce as rp
    from aaer.experiments.executors import LocalExecutor, SlurmExecutor, status_lines
    extra = shlex.split(a.train_args)
    suite_name = os.path.splitext(os.path.basename(a.suite))[0]
    out = a.out or os.path.join("runs", suite_name)
    scale = a.scale
    if a.tiny:
        if scale not in ("full", "tiny"):
            raise UsageError(f"--tiny is --scale tiny, but --scale {scale} was given too; "
                             "valid: one of the two")
        scale = "tiny"
    seeds = rp.default_seeds(a.suite, scale) if a.seeds is None else a.seeds
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
    runs = rp.build_runs(a.suite, seeds, scale, a.data_dir, extra, methods)
    rp.check_runs(runs, out)
    if a.dry_run:
        print("\n".join(rp.dry_run_lines(runs, out)))
        return 0
    slurm = SlurmExecutor(slurm_settings(a)) if a.executor == "slurm" else None
    if a.status:
        if slurm is None:
            from aaer.runs import RunDir
            rows = [{"run": r.name, "state": RunDir(os.path.join(out, r.name)).state,
                     "detail": ""} for r in runs]
        else:
            rows = slurm.status(runs, out)
        print("\n".join(status_lines(rows)))
        return 0
    failed = 0
    if not a.summary_only:
        if slurm is None:
            counts = LocalExecutor(a.jobs, a.runs_per_gpu).submit(runs, out)
        else:
            counts = slurm.submit(runs, out)
            print(f"slurm: {counts['submitted']} submitted, {counts['queued']} already queued, "
                  f"{counts['skipped']} already finished")
            if not a.wait and (counts["submitted"] or counts["queued"]):
                print(f"see `aaer reproduce {a.suite} --executor slurm --status` (same flags); "
                      "run this command again once the jobs have ended to write the summary")
                return 0
            counts = {**counts, **slurm.wait(runs, out)}
            counts["ok"] -= counts["skipped"]          # finished before this call
        failed = counts["failed"]
        print(f"runs: {counts['ok']} ok, {counts['failed']} failed, "
              f"{counts['skipped']} already finished")
    result = rp.write_summary(suite_name, runs, out)
    print(f"summary: {os.path.join(out, 'summary.md')} ({len(result['rows'])} finished runs)")
    return EXIT_FAILED_RUNS if failed else 0


def cmd_report(a) -> int:
    from aaer.reporting.report import co_text, write_report
    rep = write_report(a.run_dirs, a.out, tensorboard=a.tensorboard, html=a.html)
    for r in rep["runs"]:
        print(co_text(r).replace("**", ""))
    print(f"report: {rep['report']}")
    for p in rep["plots"]:
        print(f"plot:   {p}")
    if rep["html"]:
        print(f"html:   {rep['html']}")
    if rep["tensorboard"]:
        print(f"tensorboard: tensorboard --logdir {rep['tensorboard']}")
    return 0


def cmd_demo(a) -> int:
    from aaer.experiments.demo import run_demo
    data_dir = a.data_dir
    if a.download and data_dir is None and a.fixture == "fashion-mnist":
        data_dir = os.path.join("data", "fashion-mnist")
    run_demo(a.out_dir, data_dir, a.download, a.seed, progress=a.progress, jobs=a.jobs,
             threads=a.threads, rollback=a.rollback, fixture=a.fixture)
    return 0


HANDLERS = {"reproduce": cmd_reproduce, "export": cmd_export, "report": cmd_report,
            "demo": cmd_demo}
HELP = {
    "train": ("train a model", None),
    "eval": ("evaluate a checkpoint", None),
    "reproduce": ("run a suite of experiments and summarise it", None),
    "export": ("write a finished run's weights as safetensors + JSON", None),
    "report": ("report.md and plots comparing run directories", None),
    "demo": ("see catastrophic overfitting on a CPU in minutes (RS-FGSM vs RS-AAER on "
             "Fashion-MNIST, or CIFAR-10 with --fixture cifar10)", "Train a CO fixture "
             "(Fashion-MNIST, small CNN, eps 70/255; or --fixture cifar10: CIFAR-10 JPEG, "
             "PreActResNet-18 at width 4, eps 16/255) with RS-FGSM and RS-AAER, one seed "
             "each, then write report.md and plots to --out-dir and print whether CO "
             "happened, in which run."),
    "config": ("show a run's resolved settings and their sources (a recipe for --config)",
               None),
}


def build_parser(prog: str = "aaer") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Fast adversarial training without catastrophic overfitting (AAER and baselines)."))
    sub = p.add_subparsers(dest="command", required=True)
    for name, cls in COMMANDS.items():
        help_text, description = HELP[name]
        c = sub.add_parser(name, help=help_text, description=description or help_text)
        if name in ("train", "config"):
            add_run_flags(c)
        add_command_flags(c, cls)
    for what in ("methods", "models", "datasets"):
        sub.add_parser(what, help=f"list registered {what}")
    return p


def main(argv=None, prog: str = "aaer", seed_script: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    if seed_script:
        argv = ["train"] + argv
    ns = parser.parse_args(argv)
    command = ns.command
    del ns.command
    try:
        if command == "train":
            return cmd_train(ns, seed_script=seed_script)
        if command == "eval":
            return cmd_eval(ns)
        if command == "config":
            return cmd_config(ns)
        if command in HANDLERS:
            return HANDLERS[command](command_settings(COMMANDS[command], ns))
        return cmd_list(command)
    except UsageError as e:                  # a user's mistake: DamagedFile, MissingFile, ...
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
    except Exception as e:             # noqa: BLE001 - anything else: a bug, or the system
        traceback.print_exc()
        print(f"{prog}: {failure_line(e)}", file=sys.stderr)
        return EXIT_BUG


def failure_line(e: BaseException) -> str:
    """What an unexpected exception means, in one line after its traceback."""
    if isinstance(e, (OSError, MemoryError)) or type(e).__name__ == "OutOfMemoryError":
        return (f"error: the system refused ({type(e).__name__}: {e}); free the resource "
                "(disk space, memory, permissions) and run again")
    return ("internal error: this is a bug in aaer, not a mistake in your settings; please "
            "report it with the traceback above")


def run(main_fn=main, **kw) -> None:
    """Run ``main_fn`` as the program and exit with its code. Under torchrun the process
    ends with os._exit once its output is flushed: interpreter shutdown would tear down
    whatever distributed state a library left, with no bound on how long that takes."""
    code = main_fn(**kw)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
