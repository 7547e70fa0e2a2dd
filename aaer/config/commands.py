"""The settings of the commands other than `aaer train`, checked like a run's settings.

A setting a command shares with a run (the data set, the model, eps, the device, the
seed, ...) is the run's setting with another default (``like``), so its help and check
are written once. Every number any command takes goes through the same check
(aaer.checks.number): finite, in range, an integer where an integer is meant.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aaer import catalog
from aaer.config.schema import NORMS, SETTINGS
from aaer.config.settings import Setting, field_of, setting

# names of aaer.attacks.protocols, through the torch-free catalog (every --help reads them)
AA_VERSIONS, ATTACKS, PROTOCOLS = catalog.AA_VERSIONS, catalog.ATTACKS, catalog.PROTOCOLS
SCALES = ("full", "small", "tiny")
EXECUTORS = ("local", "slurm")
AA_BACKENDS = ("native", "official")


RESUMABLE = ", ".join(s.negate or s.flag for s in SETTINGS.values() if s.resumable)


def like(path: str, **changes) -> dataclasses.Field:
    """The run setting ``path`` (its help and check) with ``changes`` (default, ...)."""
    return field_of(dataclasses.replace(SETTINGS[path], dest="", flag="", **changes))


@dataclass
class TrainCommand:
    """`aaer train`'s settings beyond the run's."""

    resume: str | None = setting(None, "continue the run in RUN_DIR from its checkpoint.pt, "
                                 "exactly where it stopped; its settings come from its "
                                 f"config.json (only these may be given: {RESUMABLE})",
                                 optional=True,
                                 metavar="RUN_DIR", default_text="off")
    config: str | None = setting(None, "a recipe file (.json, .toml, .yaml; nested by the "
                                 "schema's sections or flat by flag names) or a run's "
                                 "config.json; flags given beside it win", optional=True,
                                 metavar="FILE", default_text="none")


@dataclass
class ConfigCommand:
    """`aaer config show`: a run's resolved settings, with their sources, as a recipe."""

    action: str = setting(None, "show: print the resolved settings of the run flags (and "
                          "--config) with each value's source, as YAML that --config reads",
                          positional=True, choices=("show",), flag="ACTION", metavar="show")
    config: str | None = setting(None, "a recipe file or a run's config.json to start from",
                                 optional=True, metavar="FILE", default_text="none")


@dataclass
class EvalCommand:
    checkpoint: str = setting(None, "a run directory, its model.pt, a published lineage state "
                              "dict (model.pth) or a .safetensors file written by `aaer "
                              "export`", required=True)
    # what a run's config.json or an export's metadata say wins over these defaults
    # (aaer.config.resolve.resolve_eval)
    dataset: str = like("data.dataset", default_text="the run's config.json, else cifar10")
    data_dir: str | None = like("data.data_dir", default_text="the run's, else ./data/<dataset>")
    download: bool = like("data.download")
    model: str = like("model.name", default_text="the run's config.json, else preactresnet18")
    model_args: dict = like("model.kwargs", default_text="the run's, else none")
    normalization: str = like("model.normalization", default_text="the run's, else dataset")
    epsilon: float = like("method.epsilon", default_text="the run's, else 8")
    norm: str = like("method.norm", help="threat model of the evaluation: linf or l2",
                     default=NORMS[0], optional=False, default_text="the run's, else linf")
    protocol: str = setting("lineage", "evaluation protocol: " + ", ".join(PROTOCOLS),
                            choices=tuple(PROTOCOLS))
    n_eval: int | None = like("evaluation.n_eval", help="first N test points (overrides the "
                              "protocol's)")
    pgd_steps: int | None = setting(None, "PGD steps (overrides the protocol's)", type=int,
                                    low=1, optional=True, default_text="the protocol's")
    pgd_restarts: int | None = setting(None, "PGD restarts (overrides the protocol's)",
                                       type=int, low=1, optional=True,
                                       default_text="the protocol's")
    pgd_step: float | None = setting(None, "PGD step, in --epsilon's units", type=float,
                                     low=0,
                                     low_open=True, optional=True, default_text="eps/4")
    batch_size: int | None = like("evaluation.batch_size", help="evaluation batch")
    device: str = like("runtime.device")
    seed: int = like("optim.seed", help="seed of the attacks' random starts")
    out: str | None = setting(None, "results JSON", optional=True,
                              default_text="<run dir>/eval_<protocol>.json, or "
                              "eval_<protocol>.json here")
    attacks: str | None = setting(None, "comma list from " + ", ".join(ATTACKS) + " "
                                  "(overrides the protocol's)", optional=True,
                                  default_text="the protocol's")
    aa_version: str | None = setting(None, "AutoAttack version", choices=AA_VERSIONS,
                                     optional=True, default_text="the protocol's, standard")
    aa_attacks: str | None = setting(None, "with --aa-version custom: comma list from "
                                     "apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square",
                                     optional=True, default_text="none")
    aa_backend: str = setting("native", "native: aaer.attacks.autoattack (resumable); "
                              "official: the `autoattack` package (fra31/auto-attack) if "
                              "installed", choices=AA_BACKENDS)
    eval_precision: str = like("evaluation.precision", help="autocast for the attacks' "
                               "forward passes (recorded when not fp32)")
    model_card: str | None = setting(None, "also write a RobustBench model card (the JSON of "
                                     "its model_info/<dataset>/<Linf|L2>/ folders) to FILE; "
                                     "needs AutoAttack standard on the full test set "
                                     "(--protocol aaer or fastat) and a run directory or an "
                                     "export (the training method)", optional=True,
                                     metavar="FILE", default_text="none")


@dataclass
class ReproduceCommand:
    suite: str = setting(None, "aaer-cifar10, aaer-cifar100, co-fixture, co-fixture-cifar10 "
                         "(the CPU CO fixtures: every method), fastat-cifar10, "
                         "fastat-cifar100, fastat-tinyimagenet (the FastAT Benchmark's "
                         "protocol), or a .json/.toml suite file (a grid over datasets, "
                         "models, methods, eps)",
                         positional=True, flag="SUITE", metavar="SUITE")
    out: str | None = setting(None, "suite directory", optional=True,
                              default_text="runs/<suite>")
    seeds: int | None = setting(None, "seeds 0..N-1 for every run", type=int, low=1,
                                optional=True, default_text="3 for the fastat suites (the "
                                "benchmark's seeds 0-2; 1 at --scale tiny), else 1")
    methods: str | None = setting(None, "only these methods of the suite: a comma list of the "
                                  "labels its summary shows (e.g. RS-AAER,FGSM-PGI)",
                                  optional=True, metavar="LABELS", default_text="all")
    scale: str = setting("full", "shrink the suite (fewer epochs, a data subset, a small "
                         "model) to exercise the pipeline on a CPU", choices=SCALES)
    tiny: bool = setting(False, "the same as --scale tiny", type=bool)
    jobs: int = setting(1, "runs at once on CPU (one per GPU on CUDA)", type=int, low=1)
    runs_per_gpu: int = setting(1, "runs sharing one device at once: K processes per GPU "
                                "(every visible GPU, or --jobs of them), each pinned to its "
                                "GPU with CUDA_VISIBLE_DEVICES; on CPU K side by side per "
                                "--jobs slot, the cores shared out; with --executor slurm, "
                                "one job per K runs, asking for one run's GPUs and K runs' "
                                "CPUs", type=int, low=1, metavar="K")
    data_dir: str | None = like("data.data_dir", help="passed to every run",
                                default_text="each run's default")
    dry_run: bool = setting(False, "print one command per run and exit", type=bool)
    summary_only: bool = setting(False, "only (re)write summary.md/.csv from the finished "
                                 "runs", type=bool)
    train_args: str = setting("", "flags added to every run, quoted, e.g. --train-args "
                              "'--device cuda'", metavar="FLAGS", default_text="none")
    executor: str = setting("local", "where the runs execute: local (this machine, --jobs at "
                            "a time) or slurm (one Slurm job per run, a job array, through "
                            "submitit)", choices=EXECUTORS)
    status: bool = setting(False, "print where each run stands (pending / running / finished "
                           "/ interrupted / failed) and exit", type=bool)
    wait: bool = setting(False, "--executor slurm: wait until the jobs have ended, then write "
                         "the summary", type=bool)
    slurm_partition: str | None = setting(None, "Slurm partition", optional=True,
                                          default_text="the cluster's default")
    slurm_account: str | None = setting(None, "Slurm account", optional=True,
                                        default_text="none")
    slurm_qos: str | None = setting(None, "Slurm QOS", optional=True, default_text="none")
    slurm_gpus_per_run: int = setting(1, "GPUs per run", type=int, low=0)
    slurm_cpus_per_run: int = setting(4, "CPUs per run (also its torch threads)", type=int,
                                      low=1)
    slurm_mem_gb: float | None = setting(None, "memory per run in GB", type=float, low=0,
                                         low_open=True, optional=True,
                                         default_text="the partition's default")
    slurm_time: int = setting(24 * 60, "time limit per job in minutes (a run that reaches it "
                              "checkpoints, is requeued and resumes)", type=int, low=1)
    slurm_array_parallelism: int = setting(64, "jobs of the array running at once", type=int,
                                           low=1)
    slurm_signal_delay: int = setting(120, "seconds before the time limit at which a job gets "
                                      "SIGTERM to checkpoint and requeue", type=int, low=15)
    slurm_max_requeues: int = setting(3, "requeues after the time limit before a run is left "
                                      "interrupted (preemptions always requeue)", type=int,
                                      low=0)
    slurm_sbatch: dict = setting({}, "another sbatch option for every job, e.g. --slurm-sbatch "
                                 "constraint=a100", type=dict, metavar="KEY=VALUE",
                                 default_text="none")
    slurm_setup: list = setting([], "a shell line run in each job before aaer, e.g. "
                                "--slurm-setup 'module load cuda'", type=list, metavar="LINE",
                                default_text="none")


@dataclass
class DemoCommand:
    fixture: str = setting("fashion-mnist", "which CO fixture: fashion-mnist (small CNN, eps "
                           "70/255, about 4 minutes) or cifar10 (real images: PreActResNet-18 "
                           "at width 4, eps 16/255, about 10 minutes)",
                           choices=("fashion-mnist", "cifar10"))
    out_dir: str = setting("runs/demo", "where the runs and the report go")
    data_dir: str | None = setting(None, "folder with the Fashion-MNIST .gz files; for "
                                   "--fixture cifar10 a CIFAR-10 image folder or .zip",
                                   optional=True,
                                   default_text="Debian's /usr/share/datasets/fashion-mnist; "
                                   "cifar10: ../shared/datasets/cifar10-jpeg.zip")
    download: bool = setting(False, "download Fashion-MNIST (MD5-checked) into --data-dir if "
                             "it is not there", type=bool)
    seed: int | None = like("optim.seed", default=None, optional=True, help="seed of both runs",
                            default_text="the fixture's demo seed: 2 (fashion-mnist; the "
                            "README's table has seeds 0-9), 0 (cifar10)")
    jobs: int | None = setting(None, "runs trained side by side in separate processes",
                               type=int, low=1, optional=True,
                               default_text="one per run, at most one per CPU core")
    threads: int | None = setting(None, "torch threads per job", type=int, low=1,
                                  optional=True, default_text="the CPU cores divided among "
                                  "the jobs")
    progress: bool = like("runtime.progress", resumable=False)
    rollback: bool = setting(False, "also train RS-FGSM with --on-co rollback (a third run, "
                             "<out-dir>/rs-fgsm-rollback) and say what the rollback did",
                             type=bool)


@dataclass
class ExportCommand:
    run: str = setting(None, "a finished run directory (model.pt, config.json, results.json)",
                       required=True)
    out: str = setting(None, "the .safetensors file to write; its metadata go to the same "
                       "name with .json", required=True)
    overwrite: bool = setting(False, "replace existing files", type=bool)


@dataclass
class ReportCommand:
    run_dirs: list = setting(None, "run directories to compare", positional=True, nargs="+",
                             flag="RUN_DIR", metavar="RUN_DIR")
    out: str | None = setting(None, "where report.md, the PNGs (and report.html) go",
                              optional=True,
                              default_text="the run directory for one run, the runs' common "
                              "parent for several")
    tensorboard: bool = setting(False, "also write TensorBoard event files to <out>/"
                                "tensorboard/<run> (view: tensorboard --logdir "
                                "<out>/tensorboard)", type=bool)
    html: bool = setting(False, "also write report.html: one self-contained page (no network "
                         "needed) with the results table, sortable by any column and "
                         "filterable by method, each run linked to its folder, and the plots "
                         "embedded", type=bool)


COMMANDS = {"train": TrainCommand, "eval": EvalCommand, "reproduce": ReproduceCommand,
            "demo": DemoCommand, "export": ExportCommand, "report": ReportCommand,
            "config": ConfigCommand}
__all__ = ["COMMANDS", "Setting", "like", *(c.__name__ for c in COMMANDS.values())]
