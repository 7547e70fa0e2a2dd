"""Reports over run directories: report.md, PNG plots and optional TensorBoard event files.

``write_report(run_dirs, out_dir)`` reads each run's config.json, metrics.jsonl and (if
the run finished) results.json, and writes

- ``probe_accuracy.png``: clean / FGSM / PGD accuracy of the CO monitor's probe per epoch,
- ``aae_count.png``: abnormal adversarial examples per epoch,
- ``lr.png``: the learning rate at the end of each epoch,

one line per run (the same colour for a run in every plot, the epoch where CO was first
flagged marked with a dotted line); when a method has several runs (seeds),
``by_method.png`` too: per method the mean over its seeds of the probe's PGD accuracy and
of the AAE count, with the range over seeds shaded and each seed's CO epoch marked; and
``report.md`` with the runs, a results table in
which every number names its protocol, the CO evidence and the per-epoch data.
Plots use matplotlib's headless Agg backend. Epochs count from 0, as in train.log.

With ``tensorboard=True`` it also writes each run's epochs as TensorBoard events
(aaer.reporting.tensorboard): ``tensorboard --logdir <out>/tensorboard``; with ``html=True``
``report.html``, one self-contained page with the sortable results table and the plots
(aaer.reporting.html).
"""
from __future__ import annotations

import os
from typing import Any

from aaer.errors import UsageError, require
from aaer.evaluation import eps_text, eval_protocol_text
from aaer.io import atomic_write_bytes
from aaer.monitor import KEPT_IN_CO, evidence_text
from aaer.reporting.html import render_html
from aaer.reporting.tensorboard import require_tensorboard, write_tensorboard
from aaer.runs import Row, Run, load_run

PLOTS = ("probe_accuracy.png", "aae_count.png", "lr.png")
PLOT_CAPTIONS = {"probe_accuracy.png": "Probe accuracy per epoch (clean, FGSM, PGD)",
                 "aae_count.png": "Abnormal adversarial examples per epoch",
                 "lr.png": "Learning rate",
                 "by_method.png": "Per method: mean over seeds (range shaded) of probe PGD "
                                  "accuracy and AAEs"}


def _labels(runs: list[Run]) -> None:
    names = [os.path.basename(os.path.normpath(r.path)) for r in runs]
    if len(set(names)) < len(names):
        common = os.path.commonpath([os.path.abspath(r.path) for r in runs])
        names = [os.path.relpath(os.path.abspath(r.path), common) for r in runs]
    for r, n in zip(runs, names):
        r.label = n


# -- numbers and their protocols --------------------------------------------------------

def _fmt(x, nd=4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def probe_protocol_text(run: Run) -> str:
    mon = (run.results or {}).get("monitor")
    if mon is not None:
        p = mon["probe"]
        step = eps_text(p["pgd_alpha"], p.get("norm", "linf"))
        return (f"probe: PGD-{p['pgd_steps']}-1 step {step} and FGSM "
                f"on {p['source']}, eval mode, seed {p['seed']}")
    m = run.settings.monitor
    return (f"probe: PGD-{m.probe_steps}-1 step eps/4 and FGSM on {m.probe_n} held-out points "
            f"({m.probe_source})")


def aae_summary(run: Run) -> str:
    _, counts = run.series("aae_count")
    if not counts:
        return "-"
    return f"{counts[0]} → max {max(counts)} → {counts[-1]}"


def method_text(run: Run) -> str:
    m = run.settings.method
    shown = [(k, getattr(m, k)) for k in ("alpha", "clamp", "lamda1", "lamda2", "lamda3")
             if getattr(m, k) is not None]
    return run.method + ("" if not shown else
                         " (" + ", ".join(f"{k} {v:g}" for k, v in shown) + ")")


def co_text(run: Run) -> str:
    if not run.has_probe:
        return f"{run.label}: no CO probe in this run (train with --probe-n N to monitor CO)."
    events = run.co_events()
    mon = (run.results or {}).get("monitor") or {}
    rule = (mon.get("probe") or {}).get("rule", {}).get("text", "the default rule")
    if not events:
        return f"{run.label}: no CO flagged (rule: {rule})."
    e = events[0]
    ev = e["evidence"]
    onset = e.get("onset_epoch", e["epoch"])
    confirmed = "" if onset == e["epoch"] else f" (confirmed at epoch {e['epoch']})"
    text = (f"{run.label}: **CO at epoch {onset}**{confirmed}: {evidence_text(ev)}; "
            f"clean {ev['clean_now']:.4f}. Response: {e['response']}.")
    if len(events) > 1:
        text += f" Flagged in {len(events)} probes in all."
    for rb in mon.get("rollbacks", []):
        text += (f" Rollback at epoch {rb['epoch']}: restored {restored_text(rb)}, "
                 f"{rb['param']} {rb['old']:g} → {rb['new']:g}.")
    if mon.get("stopped"):
        st = mon["stopped"]
        kept = (f"the weights of epoch {st['restored_from']['epoch']}" if st["restored_from"]
                else KEPT_IN_CO)
        text += f" Stopped at epoch {st['epoch']} with {kept}."
    if mon.get("outcome"):
        text += f" Outcome: {mon['outcome']}."
    return text


def restored_text(rb: dict) -> str:
    """Where a rollback went back to (epoch -1: the start of training)."""
    back = rb["restored_from"]
    return "the start of training" if not back or back["epoch"] < 0 else f"epoch {back['epoch']}"


# -- plots ----------------------------------------------------------------------------

LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def run_seeds(runs: list[Run]) -> list[int]:
    return sorted({r.seed for r in runs})


def line_styles(runs: list[Run], colors) -> list[tuple[Any, Any, str | None]]:
    """(colour, line style, legend label or None) per run.

    One colour per run, unless a method has several runs (seeds of a suite) or there are
    more runs than colours: then one colour per method, one line style per seed, and one
    legend entry per method, so that 25 runs still read at a glance.
    """
    groups = [run_group(r) for r in runs]
    if len(set(groups)) == len(runs) and len(runs) <= len(colors):
        return [(colors[i], "-", r.label) for i, r in enumerate(runs)]
    order = list(dict.fromkeys(groups))
    seeds = run_seeds(runs)
    out, seen = [], set()
    for r, g in zip(runs, groups):
        color = colors[order.index(g) % len(colors)]
        ls = LINE_STYLES[seeds.index(r.seed) % len(LINE_STYLES)]
        out.append((color, ls, None if g in seen else g))
        seen.add(g)
    return out


def legend_title(runs: list[Run], styles) -> str | None:
    if all(label is not None for _, _, label in styles):
        return None
    seeds = run_seeds(runs)
    names = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
    keys = [names.get(LINE_STYLES[i % len(LINE_STYLES)], "other") for i in range(len(seeds))]
    return "line: seed " + ", ".join(f"{s} {k}" for s, k in zip(seeds, keys))


def plot_runs(runs: list[Run], out_dir: str) -> list[str]:
    """The three PNGs; returns their paths."""
    matplotlib = require("matplotlib", "matplotlib", None, "plotting a report")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    styles = line_styles(runs, plt.get_cmap("tab10").colors)
    paths = []

    def mark_co(ax, run, color, key):
        e = run.co_epoch()
        if e is None or run.rolled_back():     # its CO epochs were discarded
            return
        ax.axvline(e, color=color, linestyle=":", linewidth=1.2)
        xs, ys = run.series(key)
        if e in xs:
            ax.plot([e], [ys[xs.index(e)]], marker="x", color=color, markersize=9,
                    markeredgewidth=2)

    def save(fig, name):
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title) in zip(axes, ((Row.PROBE_CLEAN, "clean"),
                                       (Row.PROBE_FGSM, "FGSM"),
                                       (Row.PROBE_PGD, "PGD"))):
        top = 0.0
        for run, (color, ls, label) in zip(runs, styles):
            xs, ys = run.series(key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=color, linestyle=ls, label=label)
                mark_co(ax, run, color, key)
                top = max(top, max(ys))
        ax.set_title(f"probe {title} accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.01, min(1.02, max(0.1, 1.1 * top)))   # PGD often stays low: zoom in
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    if axes[-1].get_legend_handles_labels()[0]:      # runs without a probe: no legend
        axes[-1].legend(fontsize=8, loc="best", title=legend_title(runs, styles),
                        title_fontsize=8)
    fig.suptitle("Per-epoch probe (dotted line / x: CO flagged; not drawn for runs that "
                 "rolled back: those epochs were trained again)", fontsize=10)
    save(fig, "probe_accuracy.png")

    for key, name, ylabel, title in (
            ("aae_count", "aae_count.png", "AAEs per epoch",
             "Abnormal adversarial examples (training, per epoch)"),
            (Row.LR, "lr.png", "learning rate", "Learning rate (end of epoch)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for run, (color, ls, label) in zip(runs, styles):
            xs, ys = run.series(key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=color, linestyle=ls, label=label)
                mark_co(ax, run, color, key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:          # runs without this series: no legend
            ax.legend(fontsize=8, loc="best", title=legend_title(runs, styles), title_fontsize=8)
        save(fig, name)

    groups = method_groups(runs)
    if any(len(g) > 1 for g in groups.values()):
        colors = plt.get_cmap("tab10").colors
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        for ax, (key, ylabel) in zip(axes, ((Row.PROBE_PGD, "probe PGD accuracy"),
                                            ("aae_count", "AAEs per epoch"))):
            for i, (method, group) in enumerate(groups.items()):
                band = seed_band(group, key)
                if band is None:
                    continue
                xs, mean, lo, hi, co = band
                color = colors[i % len(colors)]
                flagged = sum(r.co_epoch() is not None for r in group)
                rolled = sum(r.rolled_back() for r in group)
                ax.plot(xs, mean, marker="o", markersize=3, color=color,
                        label=f"{method} ({len(group)} seeds, CO in {flagged}"
                              + (f", rolled back in {rolled})" if rolled else ")"))
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
                for e in co:                       # where each seed's CO began, on the mean
                    ax.plot([e], [mean[xs.index(e)]], marker="x", color=color, markersize=8,
                            markeredgewidth=2)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].set_title("probe PGD accuracy: mean over seeds, range shaded", fontsize=10)
        axes[1].set_title("AAEs: mean over seeds, range shaded", fontsize=10)
        axes[1].legend(fontsize=8, loc="best", title="x: a seed's CO epoch", title_fontsize=8)
        save(fig, "by_method.png")
    return paths


def run_group(run: Run) -> str:
    """The seeds of one recipe: the method, and the CO response when it is not warn (a
    rollback run trains differently once CO is flagged)."""
    return run.method + ("" if run.on_co == "warn" else f" --on-co {run.on_co}")


def method_groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(run_group(r), []).append(r)
    return groups


def seed_band(group: list[Run], key: str, shared: bool = True):
    """(epochs, mean, min, max, CO epochs) of ``key`` over the runs of one method, on the
    epochs every run has (``shared=False``: every epoch some run has, each over the runs
    that reached it); None if there are none. A rolled-back run's CO epochs are not among
    the CO epochs (the epochs shown are the ones trained again)."""
    series = [dict(zip(*r.series(key))) for r in group]
    epochs = (set.intersection if shared else set.union)(*(set(s) for s in series))
    xs = sorted(epochs)
    if not xs:
        return None
    vals = [[s[x] for s in series if x in s] for x in xs]
    co = [e for e in (r.co_epoch() for r in group if not r.rolled_back())
          if e is not None and e in xs]
    return (xs, [sum(v) / len(v) for v in vals], [min(v) for v in vals],
            [max(v) for v in vals], co)


# -- report.md ------------------------------------------------------------------------

def render_markdown(runs: list[Run], plots: list[str], out_dir: str) -> str:
    import time

    from aaer import __version__
    lines = ["# aaer report", "",
             f"{len(runs)} run(s); written {time.strftime('%Y-%m-%d %H:%M:%S')} by aaer "
             f"{__version__}. Epochs count from 0, as in train.log.", "", "## Runs", "",
             "| run | method | data | model | eps (1/255) | seed | epochs run | train time | "
             "device hours | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r.settings
        secs = (r.results or {}).get("train_seconds")
        t = "unfinished" if secs is None else f"{secs:.0f} s"
        cost = (r.results or {}).get("cost") or {}
        hours = "-" if cost.get("device_hours") is None else f"{cost['device_hours']:.4f}"
        memory = "-" if cost.get("peak_memory_gb") is None else \
            f"{cost['peak_memory_gb']:.2f} GB ({cost.get('memory', '?')})"
        n_train = (r.config.get("data") or {}).get("n_train")
        data = f"{c.data.dataset}" + (f" ({n_train} train)" if n_train else "")
        lines.append(f"| {r.label} | {method_text(r)} | {data} | {c.model.name} | "
                     f"{c.method.epsilon:g} | {c.optim.seed} | {len(r.rows)}/"
                     f"{c.optim.epochs} | {t} | {hours} | {memory} |")

    lines += ["", "## Results", "",
              "Last-epoch probe accuracies (the CO monitor's probe; see the protocol column) "
              "and, for finished runs with an evaluation, the final evaluation.", "",
              "| run | clean | FGSM | PGD | best PGD (epoch) | CO epoch | AAEs first → max → "
              "last | protocol |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.has_probe:
            last = r.last_probe()
            xs, pgd = r.series(Row.PROBE_PGD)
            b = max(range(len(pgd)), key=lambda i: pgd[i])
            co = r.co_epoch()
            lines.append(f"| {r.label} | {_fmt(last[Row.PROBE_CLEAN])} | "
                         f"{_fmt(last[Row.PROBE_FGSM])} | {_fmt(last[Row.PROBE_PGD])} | "
                         f"{pgd[b]:.4f} ({xs[b]}) | {'none' if co is None else co} | "
                         f"{aae_summary(r)} | {probe_protocol_text(r)} |")
        else:
            lines.append(f"| {r.label} | - | - | - | - | no probe | {aae_summary(r)} | "
                         "no per-epoch probe |")
    evaluated = [r for r in runs if (r.results or {}).get("evaluation")]
    if evaluated:
        lines += ["", "Final evaluation (results.json):", "",
                  "| run | clean | FGSM | PGD | protocol |", "|---|---|---|---|---|"]
        for r in evaluated:
            ev = r.results["evaluation"]
            res = ev["results"]
            lines.append(f"| {r.label} | {_fmt(res.get('clean', {}).get('acc'))} | "
                         f"{_fmt(res.get('fgsm', {}).get('acc'))} | "
                         f"{_fmt(res.get('pgd', {}).get('acc'))} | {eval_protocol_text(ev)} |")

    lines += ["", "## Catastrophic overfitting", ""]
    lines += [f"- {co_text(r)}" for r in runs]

    lines += ["", "## Plots", ""]
    for p in plots:
        name = os.path.basename(p)
        rel = os.path.relpath(p, out_dir)
        lines += [f"![{PLOT_CAPTIONS.get(name, name)}]({rel})", ""]

    lines += ["## Per-epoch data", ""]
    for r in runs:
        lines += [f"### {r.label}", "", f"`{os.path.abspath(r.path)}`", "",
                  "| epoch | lr | train loss | train acc | AAEs | AAE frac | probe clean | "
                  "probe FGSM | probe PGD | CO |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r.rows:
            lines.append(
                f"| {row[Row.EPOCH]} | {row.get(Row.LR, 0):.4g} | {_fmt(row.get(Row.TRAIN_LOSS))} | "
                f"{_fmt(row.get(Row.TRAIN_ACC))} | {row.get('aae_count', '-')} | "
                f"{_fmt(row.get('aae_fraction'), 3)} | {_fmt(row.get(Row.PROBE_CLEAN))} | "
                f"{_fmt(row.get(Row.PROBE_FGSM))} | {_fmt(row.get(Row.PROBE_PGD))} | "
                f"{'CO' if row.get(Row.CO_FLAG) else ''} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str], out_dir: str | None = None,
                 tensorboard: bool = False, html: bool = False) -> dict[str, Any]:
    """Write report.md and the plots (and TensorBoard events, and report.html) for
    ``run_dirs``.

    ``out_dir`` defaults to the run directory for one run and to the runs' common parent
    directory for several. ``html``: also report.html, one self-contained page (the sortable
    results table and the plots; aaer.reporting.html). Returns {"report": path, "plots":
    [...], "html": path|None, "tensorboard": dir|None, "runs": [Run, ...]}.
    """
    if not run_dirs:
        raise UsageError("give at least one run directory")
    require("matplotlib", "matplotlib", None, "plotting a report")
    if tensorboard:
        require_tensorboard()
    runs = [load_run(d) for d in run_dirs]
    _labels(runs)
    if out_dir is None:
        if len(runs) == 1:
            out_dir = runs[0].path
        else:
            out_dir = os.path.commonpath([os.path.abspath(r.path) for r in runs])
    os.makedirs(out_dir, exist_ok=True)
    plots = plot_runs(runs, out_dir)
    md = render_markdown(runs, plots, out_dir)
    report = os.path.join(out_dir, "report.md")
    atomic_write_bytes(report, md.encode())
    page = None
    if html:
        page = os.path.join(out_dir, "report.html")
        atomic_write_bytes(page, render_html(runs, plots, out_dir, PLOT_CAPTIONS).encode())
    tb_dir = None
    if tensorboard:
        tb_dir = os.path.join(out_dir, "tensorboard")
        for r in runs:
            write_tensorboard(r.rows, os.path.join(tb_dir, r.label.replace(os.sep, "_")))
    return {"report": report, "plots": plots, "html": page, "tensorboard": tb_dir,
            "runs": runs}
