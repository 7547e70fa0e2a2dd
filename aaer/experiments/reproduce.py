"""`aaer reproduce <suite>`: run a grid of training runs and summarise it as the paper's table.

A suite is a list of runs (method x eps x seed x data set x model), each an `aaer train`
command line. Runs go to <out>/<run name>/; a finished run (results.json) is skipped and
an interrupted one (checkpoint.pt, no results.json) is resumed (aaer.experiments.executors:
on this machine or on Slurm), so the whole suite can be
stopped and started again. The suite ends with summary.md and summary.csv: per method and
eps, mean ± std over seeds of clean, PGD and AutoAttack accuracy, seconds per epoch, and
the CO rate (the fraction of seeds in which the monitor flagged catastrophic overfitting).
"""
from __future__ import annotations

import io
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from aaer.config.commands import SCALES
from aaer.config.flags import request_from_argv
from aaer.config.resolve import resolve
from aaer.config.schema import FLAT, SETTINGS
from aaer.experiments.demo import CIFAR10_FIXTURE, FIXTURE_SETTINGS, FIXTURES, cifar10_jpeg
from aaer.errors import MissingFile, UsageError, require
from aaer.experiments import fastat
from aaer.io import atomic_write_bytes
from aaer.methods.aaer import N_LAMBDAS, RS_LAMBDAS
from aaer.reporting.report import write_report
from aaer.runs import Row, RunDir, load_run

BUILTIN_SUITES = ("aaer-cifar10", "aaer-cifar100", "co-fixture", "co-fixture-cifar10",
                  *fastat.SUITES)
# baselines the AAER paper compares against, at the same radii
SUITE_BASELINES = ("rs-fgsm", "n-fgsm", "gradalign", "zerograd", "multigrad", "pgd")
METHOD_LABELS = {"rs-fgsm": "RS-FGSM", "n-fgsm": "N-FGSM", "fgsm": "FGSM",
                 "gradalign": "GradAlign", "zerograd": "ZeroGrad", "multigrad": "MultiGrad",
                 "pgd": "PGD-AT", "free": "Free-AT", "elle": "ELLE", "elle-a": "ELLE-A",
                 "rs-aaer": "RS-AAER", "n-aaer": "N-AAER", "ssat": "SSAT", "nuat": "NuAT",
                 "gat": "GAT", "fgsm-pgi": "FGSM-PGI", "fgsm-mep-cs": "FGSM-MEP-CS",
                 "fgsm-rs-cs": "FGSM-RS-CS", "fgsm-pco": "FGSM-PCO", "fgsm-uap": "FGSM-UAP",
                 "fgsm-cuap": "FGSM-CUAP", "fgsm-fuap": "FGSM-FUAP", "liet": "LIET",
                 "v-lap": "V-LAP", "r-lap": "R-LAP", "n-lap": "N-LAP"}


@dataclass
class SuiteRun:
    """One training run of a suite: `aaer train` with ``flags`` and ``seed``."""

    name: str                   # directory name under the suite's out dir
    label: str                  # the method as the table shows it, e.g. RS-AAER
    eps: float                  # in 1/255
    seed: int
    flags: list[str] = field(default_factory=list)

    def argv(self, out_dir: str) -> list[str]:
        return ["train", *self.flags, "--seed", str(self.seed), "--out-dir",
                os.path.join(out_dir, self.name), "--no-progress"]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# every run of the paper suites is evaluated as the paper reports it (PGD-50-10 step eps/4
# and AutoAttack standard, full test set) and watched by the CO monitor (1000 test points)
PAPER_EVAL_FLAGS = ("--eval-protocol", "aaer", "--probe-n", "1000")


def aaer_suite(dataset: str) -> list[tuple[str, str, float, list[str]]]:
    """The seed README's 8 commands for a CIFAR data set, plus the baselines at each eps."""
    tag = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[dataset]
    rows = []
    for eps in (8, 12, 16, 32):
        for variant, table, clamp, alpha in (("RS", RS_LAMBDAS, 1, "1.25"),
                                             ("N", N_LAMBDAS, 0, "1.00")):
            l2, l3 = table[(dataset, eps)]
            rows.append((f"{tag}_{variant}-AAER_{eps}", f"{variant}-AAER", float(eps), [
                "--dataset", dataset, "--epochs", "30", "--clamp", str(clamp), "--alpha", alpha,
                "--epsilon", str(eps), "--lamda1", "1.0", "--lamda2", _fmt(l2),
                "--lamda3", _fmt(l3), *PAPER_EVAL_FLAGS]))
        for method in SUITE_BASELINES:
            rows.append((f"{tag}_{METHOD_LABELS[method]}_{eps}", METHOD_LABELS[method],
                         float(eps), ["--dataset", dataset, "--epochs", "30", "--method", method,
                                      "--epsilon", str(eps), *PAPER_EVAL_FLAGS]))
    return rows


# the fixture suites train every registered method: these five first (the first table)
FIXTURE_METHODS = ("fgsm", "rs-fgsm", "n-fgsm", "rs-aaer", "n-aaer")
# suite name -> the fixture it runs (aaer.experiments.demo.FIXTURES)
FIXTURE_SUITES = {"co-fixture": "fashion-mnist", "co-fixture-cifar10": "cifar10"}


def fixture_flags(method: str, fixture: str = "fashion-mnist") -> list[str]:
    """`aaer train` flags of a CPU-scale CO fixture (aaer.experiments.demo) for a method."""
    spec = FIXTURES[fixture]
    flags = ["--method", method, "--device", "cpu"]
    for k in FIXTURE_SETTINGS:
        if spec.get(k) is not None:
            flags += [FLAT[k][1].flag, _fmt(spec[k])]
    if spec is CIFAR10_FIXTURE:
        try:                        # the JPEG copy beside a checkout; else --data-dir decides
            flags += ["--data-dir", cifar10_jpeg()]
        except MissingFile:
            pass
    return flags


def co_fixture_suite(suite: str = "co-fixture") -> list[tuple[str, str, float, list[str]]]:
    from aaer.methods import METHODS
    fixture = FIXTURE_SUITES[suite]
    eps = float(FIXTURES[fixture]["epsilon"])
    methods = list(FIXTURE_METHODS) + [m for m in METHODS if m not in FIXTURE_METHODS]
    return [(f"{suite}_{METHOD_LABELS[m]}", METHOD_LABELS[m], eps, fixture_flags(m, fixture))
            for m in methods]


def _toml():
    """The TOML reader: tomllib (Python >= 3.11) or the tomli package."""
    try:
        import tomllib
        return tomllib
    except ModuleNotFoundError:
        try:
            import tomli
            return tomli
        except ModuleNotFoundError:
            raise UsageError("TOML suite files need Python >= 3.11 or the tomli package "
                             "(pip install tomli); or write the suite as JSON") from None


def user_suite(path: str) -> list[tuple[str, str, float, list[str]]]:
    """A grid from a JSON or TOML file:

        {"name": "my-grid", "datasets": ["cifar10"], "models": ["preactresnet18"],
         "methods": ["rs-fgsm", "rs-aaer"], "eps": [8, 16], "epochs": 30,
         "flags": ["--lr-max", "0.2"], "method_flags": {"rs-aaer": ["--lamda3", "2.0"]}}
    """
    if not os.path.isfile(path):
        raise MissingFile(f"suite file {path!r} not found; give a built-in suite "
                          f"({', '.join(BUILTIN_SUITES)}) or a .json/.toml file")
    with open(path, "rb") as f:
        raw = f.read()
    toml = _toml() if path.endswith(".toml") else None
    try:
        if toml is not None:
            spec = toml.loads(raw.decode())
        else:
            spec = json.loads(raw)
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise UsageError(f"suite file {path!r} could not be parsed: {e}") from None
    allowed = {"name", "datasets", "models", "methods", "eps", "epochs", "flags",
               "method_flags", "data_dir"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise UsageError(f"suite file {path!r}: unknown keys {unknown}; valid: {sorted(allowed)}")
    if not spec.get("methods") or not spec.get("eps"):
        raise UsageError(f"suite file {path!r} needs non-empty 'methods' and 'eps' lists")

    def strings(key, default):
        v = spec.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) and
                                              not isinstance(x, bool) for x in v):
            raise UsageError(f"suite file {path!r}: {key!r} must be a list of values, got {v!r}")
        return v
    for key, default in (("datasets", ["cifar10"]), ("models", ["preactresnet18"]),
                         ("methods", []), ("eps", []), ("flags", [])):
        strings(key, default)
    spec["eps"] = [SETTINGS["method.epsilon"].check(e) if not isinstance(e, str) else e
                   for e in spec["eps"]]
    if any(isinstance(e, str) for e in spec["eps"]):
        raise UsageError(f"suite file {path!r}: 'eps' must be numbers (1/255 units), got "
                         f"{spec['eps']!r}")
    if "epochs" in spec:
        spec["epochs"] = SETTINGS["optim.epochs"].check(spec["epochs"])
    mf = spec.get("method_flags", {})
    if not isinstance(mf, dict) or not all(isinstance(v, list) for v in mf.values()):
        raise UsageError(f"suite file {path!r}: 'method_flags' must map a method to a list of "
                         f"flags, got {mf!r}")
    rows = []
    for ds in spec.get("datasets", ["cifar10"]):
        for model in spec.get("models", ["preactresnet18"]):
            for method in spec["methods"]:
                for eps in spec["eps"]:
                    label = METHOD_LABELS.get(method, method)
                    name = f"{ds}_{model}_{label}_{_fmt(float(eps))}"
                    flags = ["--dataset", ds, "--model", model, "--method", method,
                             "--epsilon", _fmt(float(eps))]
                    if "epochs" in spec:
                        flags += ["--epochs", str(int(spec["epochs"]))]
                    if "data_dir" in spec:
                        flags += ["--data-dir", str(spec["data_dir"])]
                    flags += [str(v) for v in spec.get("flags", [])]
                    flags += [str(v) for v in spec.get("method_flags", {}).get(method, [])]
                    rows.append((name, label, float(eps), flags))
    return rows


def default_seeds(suite: str, scale: str = "full") -> int:
    """Seeds 0..N-1 when --seeds is not given: the FastAT suites' 3 (the benchmark's; 1 at
    --scale tiny), else 1."""
    return fastat.SEEDS if suite in fastat.SUITES and scale != "tiny" else 1


def scale_flags(scale: str, suite: str) -> list[str]:
    """Flags that shrink a suite so the whole pipeline runs on a CPU."""
    if suite in fastat.SUITES:
        return fastat.scale_flags(scale, fastat.SUITES[suite])
    if scale == "full" or suite in FIXTURE_SUITES and scale == "small":
        return []
    if suite in FIXTURE_SUITES:   # tiny: the fixture in a few epochs
        return ["--epochs", "2", "--n-train", "2000", "--probe-n", "200"]
    if scale == "small":
        return ["--epochs", "5", "--n-train", "10000", "--model", "small-cnn-32",
                "--n-eval", "1000", "--eval-protocol", "lineage"]
    return ["--epochs", "1", "--n-train", "512", "--model", "small-cnn", "--batch-size", "64",
            "--n-eval", "64", "--eval-protocol", "quick", "--probe-n", "64"]


def _override(flags: list[str], extra: list[str]) -> list[str]:
    """Later flags win: drop earlier occurrences of every flag that ``extra`` sets."""
    names = {f for f in extra if f.startswith("--")}
    out, skip = [], False
    for i, f in enumerate(flags):
        if skip:
            skip = False
            continue
        if f in names:
            skip = i + 1 < len(flags) and not flags[i + 1].startswith("--")
            continue
        out.append(f)
    return out + extra


def build_runs(suite: str, seeds: int, scale: str = "full", data_dir: str | None = None,
               extra: list[str] | None = None, methods: list[str] | None = None
               ) -> list[SuiteRun]:
    """The runs of ``suite`` for seeds 0..seeds-1; ``methods``: only the runs whose method
    label (as the summary shows it, e.g. RS-AAER) is one of these, in any case."""
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if scale not in SCALES:
        raise UsageError(f"--scale must be one of {SCALES}, got {scale!r}")
    if suite == "aaer-cifar10":
        rows = aaer_suite("cifar10")
    elif suite == "aaer-cifar100":
        rows = aaer_suite("cifar100")
    elif suite in FIXTURE_SUITES:
        rows = co_fixture_suite(suite)
    elif suite in fastat.SUITES:
        rows = fastat.suite_rows(suite, scale)
    elif suite.endswith((".json", ".toml")) or os.path.sep in suite:
        rows = user_suite(suite)
    else:
        raise UsageError(f"unknown suite {suite!r}; built-in: {', '.join(BUILTIN_SUITES)}, "
                         "or a path to a .json/.toml suite file")
    if methods:
        labels = {label.lower() for _, label, _, _ in rows}
        unknown = sorted(m for m in methods if m.lower() not in labels)
        if unknown:
            raise UsageError(f"--methods {','.join(unknown)}: not in suite {suite}; valid: "
                             f"{', '.join(sorted({label for _, label, _, _ in rows}))}")
        wanted = {m.lower() for m in methods}
        rows = [r for r in rows if r[1].lower() in wanted]
    tail = scale_flags(scale, suite) + (["--data-dir", data_dir] if data_dir else []) + \
        list(extra or [])
    runs = []
    for name, label, eps, flags in rows:
        for seed in range(seeds):
            runs.append(SuiteRun(f"{name}_s{seed}", label, eps, seed, _override(flags, tail)))
    return runs


def run_state(run_dir: str) -> str:
    """empty, interrupted or finished (aaer.runs.RunDir.state)."""
    return RunDir(run_dir).state


def check_runs(runs: list[SuiteRun], out_dir: str) -> None:
    """Resolve every run's flags as `aaer train` would, before any run starts: a bad flag
    in a suite line fails here, naming the run, not hours later in its job."""
    for run in runs:
        argv = run.argv(out_dir)[1:]
        try:
            resolve(request_from_argv(argv))
        except UsageError as e:
            raise UsageError(f"suite run {run.name}: {e}") from None


# -- summary ------------------------------------------------------------------------

def collect(runs: list[SuiteRun], out_dir: str) -> list[dict]:
    rows = []
    for run in runs:
        d = os.path.join(out_dir, run.name)
        if run_state(d) != "finished":
            continue
        r = load_run(d, need_epochs=False)
        res, metrics = r.results, r.rows
        ev = (res.get("evaluation") or {}).get("results", {})
        co = r.monitored()
        rows.append({
            "run": run.name, "method": run.label, "eps": run.eps, "seed": run.seed,
            "clean": ev.get("clean", {}).get("acc"), "pgd": ev.get("pgd", {}).get("acc"),
            "autoattack": (ev.get("autoattack") or {}).get("acc"),
            "pgd_protocol": ev.get("pgd", {}).get("protocol"),
            "pgd_steps": ev.get("pgd", {}).get("steps"),
            "pgd_restarts": ev.get("pgd", {}).get("restarts"),
            "n_eval": ev.get("pgd", {}).get("n"),
            "seconds_per_epoch": res.get("seconds_per_epoch"), "co": co,
            Row.CO_EPOCH: r.co_epoch() if co else None,
            "train_seconds": res.get("train_seconds"), **monitor_outcome(res),
            **run_trajectory(metrics)})
    return rows


def monitor_outcome(results: dict) -> dict:
    """The CO monitor's verdict on a finished run: rollbacks, epochs they discarded, whether
    the run ends in CO, and the outcome in words."""
    mon = results.get("monitor")
    if not isinstance(mon, dict):
        return {}
    return {"rollbacks": len(mon.get("rollbacks", [])),
            "epochs_discarded": mon.get("epochs_discarded", 0.0),
            "ends_in_co": mon.get("ends_in_co"), "outcome": mon.get("outcome")}


def run_trajectory(metrics: list[dict]) -> dict:
    """What one run's epochs show: probe PGD accuracy at its best and at the end, and the
    AAE count at the start, at the best probe, at its largest and at the end."""
    out: dict[str, Any] = {}
    if metrics and metrics[-1].get(Row.CO_CANDIDATE):
        out["co_candidate_at_end"] = metrics[-1][Row.EPOCH]   # met the rule, not yet confirmed
    probe = [r for r in metrics if r.get(Row.PROBE_PGD) is not None]
    if probe:
        best = max(probe, key=lambda r: r[Row.PROBE_PGD])        # the first of equal bests
        out.update(probe_pgd_best=best[Row.PROBE_PGD], probe_pgd_best_epoch=best[Row.EPOCH],
                   probe_pgd_last=probe[-1][Row.PROBE_PGD])
    aae = [r for r in metrics if r.get("aae_count") is not None]
    if aae:
        out.update(aae_first=aae[0]["aae_count"], aae_max=max(r["aae_count"] for r in aae),
                   aae_last=aae[-1]["aae_count"], aae_fraction_last=aae[-1].get("aae_fraction"))
        if probe:
            at_best = [r for r in aae if r[Row.EPOCH] == out["probe_pgd_best_epoch"]]
            out["aae_at_best"] = at_best[0]["aae_count"] if at_best else None
    return out


def _mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["eps"]), []).append(r)
    out = []
    for (method, eps), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = {"method": method, "eps": eps, "seeds": len(rs)}
        for key in ("clean", "pgd", "autoattack", "seconds_per_epoch"):
            s[key + "_mean"], s[key + "_std"] = _mean_std([r[key] for r in rs])
        flags = [r["co"] for r in rs if r["co"] is not None]
        s["co_rate"] = sum(flags) / len(flags) if flags else None
        s["co_monitored"] = len(flags)
        protos = sorted({f"{r['pgd_protocol']} (PGD-{r['pgd_steps']}-{r['pgd_restarts']}, "
                         f"n={r['n_eval']})" for r in rs if r["pgd_protocol"]})
        s["protocol"] = "; ".join(protos)
        out.append(s)
    return out


def _pm(m, s, pct=True):
    if m is None:
        return "n/a"
    k = 100 if pct else 1
    return f"{m * k:.2f} ± {s * k:.2f}"


def summary_markdown(suite: str, summary: list[dict], rows: list[dict]) -> str:
    lines = [f"# aaer reproduce: {suite}", "",
             f"{len(rows)} finished run(s). Accuracies in %, mean ± std over seeds; "
             "CO rate = fraction of seeds in which the monitor flagged catastrophic overfitting.",
             "", "| method | eps | seeds | clean | PGD | AutoAttack | s/epoch | CO rate | PGD protocol |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        co = "n/a" if s["co_rate"] is None else f"{s['co_rate']:.2f} ({s['co_monitored']})"
        lines.append(f"| {s['method']} | {s['eps']:g}/255 | {s['seeds']} | "
                     f"{_pm(s['clean_mean'], s['clean_std'])} | {_pm(s['pgd_mean'], s['pgd_std'])} | "
                     f"{_pm(s['autoattack_mean'], s['autoattack_std'])} | "
                     f"{_pm(s['seconds_per_epoch_mean'], s['seconds_per_epoch_std'], False)} | "
                     f"{co} | {s['protocol']} |")
    lines += ["", "## Runs", "",
              "Epochs count from 0. Probe: the CO monitor's PGD accuracy on its held-out batch "
              "(best, at which epoch, and at the end); AAEs: abnormal adversarial examples per "
              "epoch, at the first epoch, at the best probe's epoch, at most, and at the end "
              "(with the last epoch's fraction of training examples). 'candidate at E': the "
              "last probe met the CO rule but training ended before a second probe could "
              "confirm it; such runs do not count in the CO rate.", "",
              "| run | seed | clean | PGD | CO epoch | probe PGD best (epoch) -> last | "
              "AAEs first / at best / max / last (fraction) | s/epoch | rollbacks (epochs "
              "discarded) | outcome |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = (lambda v: "n/a" if v is None else f"{100 * v:.2f}")
        co = "n/a" if r["co"] is None else ("none" if not r["co"] else str(r[Row.CO_EPOCH]))
        if not r["co"] and r.get("co_candidate_at_end") is not None:
            co += f" (candidate at {r['co_candidate_at_end']})"
        probe = "n/a"
        if r.get("probe_pgd_best") is not None:
            probe = (f"{f(r['probe_pgd_best'])} ({r['probe_pgd_best_epoch']}) -> "
                     f"{f(r['probe_pgd_last'])}")
        aae = "n/a"
        if r.get("aae_first") is not None:
            at_best = r.get("aae_at_best")
            frac = r.get("aae_fraction_last")
            aae = (f"{r['aae_first']} / {'n/a' if at_best is None else at_best} / "
                   f"{r['aae_max']} / {r['aae_last']}"
                   + ("" if frac is None else f" ({frac:.2f})"))
        spe = r.get("seconds_per_epoch")
        rb = "n/a" if r.get("rollbacks") is None else \
            f"{r['rollbacks']} ({r.get('epochs_discarded', 0):g})"
        lines.append(f"| {r['run']} | {r['seed']} | {f(r['clean'])} | {f(r['pgd'])} | {co} | "
                     f"{probe} | {aae} | {'n/a' if spe is None else f'{spe:.1f}'} | {rb} | "
                     f"{r.get('outcome') or 'n/a'} |")
    return "\n".join(lines) + "\n"


def summary_csv(summary: list[dict]) -> str:
    cols = ["method", "eps", "seeds", "clean_mean", "clean_std", "pgd_mean", "pgd_std",
            "autoattack_mean", "autoattack_std", "seconds_per_epoch_mean",
            "seconds_per_epoch_std", "co_rate", "co_monitored", "protocol"]
    return fastat.csv_text(summary, cols)


def plot_robust_vs_eps(summary: list[dict], path: str) -> bool:
    matplotlib = require("matplotlib", "matplotlib", None, "plotting a suite's summary")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({s["method"] for s in summary}):
        pts = sorted((s["eps"], s["pgd_mean"], s["pgd_std"]) for s in summary
                     if s["method"] == method and s["pgd_mean"] is not None)
        if pts:
            ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts],
                        yerr=[100 * p[2] for p in pts], marker="o", capsize=3, label=method)
    ax.set_xlabel("eps (1/255)")
    ax.set_ylabel("PGD accuracy (%)")
    ax.set_title("robust accuracy vs eps")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:          # no PGD numbers (--eval-protocol none)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_summary(suite: str, runs: list[SuiteRun], out_dir: str) -> dict:
    if suite in fastat.SUITES:                 # beside the benchmark's published numbers
        result = fastat.write_summary(suite, runs, out_dir)
        run_dirs = [os.path.join(out_dir, r["run"]) for r in result["rows"]]
        if run_dirs:
            write_report(run_dirs, os.path.join(out_dir, "report"))
        return result
    rows = collect(runs, out_dir)
    summary = summarize(rows)
    atomic_write_bytes(os.path.join(out_dir, "summary.md"),
                       summary_markdown(suite, summary, rows).encode())
    atomic_write_bytes(os.path.join(out_dir, "summary.csv"), summary_csv(summary).encode())
    plot_robust_vs_eps(summary, os.path.join(out_dir, "robust_vs_eps.png"))
    run_dirs = [os.path.join(out_dir, r["run"]) for r in rows]
    if run_dirs:
        write_report(run_dirs, os.path.join(out_dir, "report"))
    return {"rows": rows, "summary": summary}


def dry_run_lines(runs: list[SuiteRun], out_dir: str) -> list[str]:
    return ["aaer " + " ".join(shlex.quote(a) for a in r.argv(out_dir)) for r in runs]
