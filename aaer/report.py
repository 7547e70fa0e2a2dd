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

TensorBoard event files are written by this module itself (the TFRecord framing and the
few protobuf fields of a scalar summary), so the ``tensorboard`` package is needed only
to view them: ``tensorboard --logdir <out>/tensorboard``.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from aaer.io import atomic_write_bytes, read_jsonl
from aaer.monitor import evidence_text

PLOTS = ("probe_accuracy.png", "aae_count.png", "lr.png")


@dataclass
class Run:
    path: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    results: dict[str, Any] | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def has_probe(self) -> bool:
        return any("probe_pgd_acc" in r for r in self.rows)

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def co_epoch(self) -> int | None:
        """The epoch CO began (the first probe of the confirmed run), or None."""
        mon = (self.results or {}).get("monitor")
        if mon is not None:
            return mon.get("co_epoch")
        epochs = [r["co_epoch"] for r in self.rows if r.get("co_epoch") is not None]
        return epochs[0] if epochs else None

    def co_events(self) -> list[dict]:
        mon = (self.results or {}).get("monitor")
        if mon is not None:
            return list(mon.get("events", []))
        return [e for r in self.rows for e in r.get("co_events", [])]


def load_run(path: str) -> Run:
    """Read one run directory; raises FileNotFoundError/ValueError saying what is missing."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run directory {path!r} does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a run directory: it has no config.json "
                                "(give directories written by `aaer train` or `aaer demo`)")
    with open(cfg_path) as f:
        config = json.load(f)
    rows = read_jsonl(os.path.join(path, "metrics.jsonl"))
    if not rows:
        raise ValueError(f"run {path!r} has no finished epoch yet (metrics.jsonl is missing "
                         "or empty)")
    results = None
    res_path = os.path.join(path, "results.json")
    if os.path.isfile(res_path):
        with open(res_path) as f:
            results = json.load(f)
    return Run(path=path, config=config, rows=rows, results=results)


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


def eval_protocol_text(evaluation: dict) -> str:
    """'lineage: PGD-50-10, step 2/255, uniform start, n=10000, seed 0' for one report."""
    proto = evaluation.get("protocol", {})
    pgd = evaluation.get("results", {}).get("pgd")
    parts = [proto.get("name", "?")]
    if pgd is not None:
        parts.append(f"PGD-{pgd['steps']}-{pgd['restarts']} step {pgd['alpha'] * 255:.4g}/255"
                     f" ({pgd.get('selection', 'worst')} restart rule)")
    parts.append(f"FGSM zero start, eps {evaluation.get('eps', 0) * 255:.4g}/255")
    parts.append(f"n={evaluation.get('n')}, seed {evaluation.get('seed')}")
    return ", ".join(parts)


def probe_protocol_text(run: Run) -> str:
    mon = (run.results or {}).get("monitor")
    if mon is not None:
        p = mon["probe"]
        return (f"probe: PGD-{p['pgd_steps']}-1 step {p['pgd_alpha'] * 255:.4g}/255 and FGSM "
                f"on {p['source']}, eval mode, seed {p['seed']}")
    cfg = run.config
    return (f"probe: PGD-{cfg.get('probe_steps', '?')}-1 step eps/4 and FGSM on "
            f"{cfg.get('probe_n', '?')} held-out points ({cfg.get('probe_source', 'test')})")


def aae_summary(run: Run) -> str:
    _, counts = run.series("aae_count")
    if not counts:
        return "-"
    return f"{counts[0]} → max {max(counts)} → {counts[-1]}"


def method_text(run: Run) -> str:
    m = run.config.get("method_resolved", {})
    keys = [k for k in ("alpha", "clamp", "lamda1", "lamda2", "lamda3") if k in m]
    return run.method + ("" if not keys else " (" + ", ".join(f"{k} {m[k]:g}" for k in keys) + ")")


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
        text += (f" Rollback at epoch {rb['epoch']}: restored epoch "
                 f"{rb['restored_from']['epoch']}, {rb['param']} {rb['old']:g} → {rb['new']:g}.")
    if mon.get("stopped"):
        st = mon["stopped"]
        text += (f" Stopped at epoch {st['epoch']} with the weights of epoch "
                 f"{st['restored_from']['epoch']}.")
    return text


# -- plots ----------------------------------------------------------------------------

LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def run_seed(run: Run) -> int:
    return int(run.config.get("seed", 0))


def run_seeds(runs: list[Run]) -> list[int]:
    return sorted({run_seed(r) for r in runs})


def line_styles(runs: list[Run], colors) -> list[tuple[Any, Any, str | None]]:
    """(colour, line style, legend label or None) per run.

    One colour per run, unless a method has several runs (seeds of a suite) or there are
    more runs than colours: then one colour per method, one line style per seed, and one
    legend entry per method, so that 25 runs still read at a glance.
    """
    methods = [r.method for r in runs]
    if len(set(methods)) == len(runs) and len(runs) <= len(colors):
        return [(colors[i], "-", r.label) for i, r in enumerate(runs)]
    order = list(dict.fromkeys(methods))
    seeds = run_seeds(runs)
    out, seen = [], set()
    for r in runs:
        color = colors[order.index(r.method) % len(colors)]
        ls = LINE_STYLES[seeds.index(run_seed(r)) % len(LINE_STYLES)]
        out.append((color, ls, None if r.method in seen else r.method))
        seen.add(r.method)
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
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    styles = line_styles(runs, plt.get_cmap("tab10").colors)
    paths = []

    def mark_co(ax, run, color, key):
        e = run.co_epoch()
        if e is None:
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
    for ax, (key, title) in zip(axes, (("probe_clean_acc", "clean"),
                                       ("probe_fgsm_acc", "FGSM"),
                                       ("probe_pgd_acc", "PGD"))):
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
    fig.suptitle("Per-epoch probe (dotted line / x: CO flagged)", fontsize=10)
    save(fig, "probe_accuracy.png")

    for key, name, ylabel, title in (
            ("aae_count", "aae_count.png", "AAEs per epoch",
             "Abnormal adversarial examples (training, per epoch)"),
            ("lr", "lr.png", "learning rate", "Learning rate (end of epoch)")):
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
        for ax, (key, ylabel) in zip(axes, (("probe_pgd_acc", "probe PGD accuracy"),
                                            ("aae_count", "AAEs per epoch"))):
            for i, (method, group) in enumerate(groups.items()):
                band = seed_band(group, key)
                if band is None:
                    continue
                xs, mean, lo, hi, co = band
                color = colors[i % len(colors)]
                ax.plot(xs, mean, marker="o", markersize=3, color=color,
                        label=f"{method} ({len(group)} seeds, CO in {len(co)})")
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


def method_groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.method, []).append(r)
    return groups


def seed_band(group: list[Run], key: str):
    """(epochs, mean, min, max, CO epochs) of ``key`` over the runs of one method, on the
    epochs every run has; None if they share none."""
    series = [dict(zip(*r.series(key))) for r in group]
    xs = sorted(set.intersection(*(set(s) for s in series)))
    if not xs:
        return None
    vals = [[s[x] for s in series] for x in xs]
    co = [e for e in (r.co_epoch() for r in group) if e is not None and e in xs]
    return (xs, [sum(v) / len(v) for v in vals], [min(v) for v in vals],
            [max(v) for v in vals], co)


# -- report.md ------------------------------------------------------------------------

def render_markdown(runs: list[Run], plots: list[str], out_dir: str) -> str:
    from aaer import __version__
    lines = ["# aaer report", "",
             f"{len(runs)} run(s); written {time.strftime('%Y-%m-%d %H:%M:%S')} by aaer "
             f"{__version__}. Epochs count from 0, as in train.log.", "", "## Runs", "",
             "| run | method | data | model | eps (1/255) | seed | epochs run | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r.config
        secs = (r.results or {}).get("train_seconds")
        t = "unfinished" if secs is None else f"{secs:.0f} s"
        n_train = (c.get("data") or {}).get("n_train")
        data = f"{c.get('dataset', '?')}" + (f" ({n_train} train)" if n_train else "")
        lines.append(f"| {r.label} | {method_text(r)} | {data} | {c.get('model', '?')} | "
                     f"{c.get('epsilon', '?'):g} | {c.get('seed', '?')} | {len(r.rows)}/"
                     f"{c.get('epochs', '?')} | {t} |")

    lines += ["", "## Results", "",
              "Last-epoch probe accuracies (the CO monitor's probe; see the protocol column) "
              "and, for finished runs with an evaluation, the final evaluation.", "",
              "| run | clean | FGSM | PGD | best PGD (epoch) | CO epoch | AAEs first → max → "
              "last | protocol |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.has_probe:
            last = [row for row in r.rows if "probe_pgd_acc" in row][-1]
            xs, pgd = r.series("probe_pgd_acc")
            b = max(range(len(pgd)), key=lambda i: pgd[i])
            co = r.co_epoch()
            lines.append(f"| {r.label} | {_fmt(last['probe_clean_acc'])} | "
                         f"{_fmt(last['probe_fgsm_acc'])} | {_fmt(last['probe_pgd_acc'])} | "
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
    captions = {"probe_accuracy.png": "Probe accuracy per epoch (clean, FGSM, PGD)",
                "aae_count.png": "Abnormal adversarial examples per epoch",
                "lr.png": "Learning rate",
                "by_method.png": "Per method: mean over seeds (range shaded) of probe PGD "
                                 "accuracy and AAEs"}
    for p in plots:
        name = os.path.basename(p)
        rel = os.path.relpath(p, out_dir)
        lines += [f"![{captions.get(name, name)}]({rel})", ""]

    lines += ["## Per-epoch data", ""]
    for r in runs:
        lines += [f"### {r.label}", "", f"`{os.path.abspath(r.path)}`", "",
                  "| epoch | lr | train loss | train acc | AAEs | AAE frac | probe clean | "
                  "probe FGSM | probe PGD | CO |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r.rows:
            lines.append(
                f"| {row['epoch']} | {row.get('lr', 0):.4g} | {_fmt(row.get('train_loss'))} | "
                f"{_fmt(row.get('train_acc'))} | {row.get('aae_count', '-')} | "
                f"{_fmt(row.get('aae_fraction'), 3)} | {_fmt(row.get('probe_clean_acc'))} | "
                f"{_fmt(row.get('probe_fgsm_acc'))} | {_fmt(row.get('probe_pgd_acc'))} | "
                f"{'CO' if row.get('co_flag') else ''} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str], out_dir: str | None = None,
                 tensorboard: bool = False) -> dict[str, Any]:
    """Write report.md and the plots (and TensorBoard events) for ``run_dirs``.

    ``out_dir`` defaults to the run directory for one run and to the runs' common parent
    directory for several. Returns {"report": path, "plots": [...], "tensorboard": dir|None,
    "runs": [Run, ...]}.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
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
    tb_dir = None
    if tensorboard:
        tb_dir = os.path.join(out_dir, "tensorboard")
        for r in runs:
            write_tensorboard(r, os.path.join(tb_dir, r.label.replace(os.sep, "_")))
    return {"report": report, "plots": plots, "tensorboard": tb_dir, "runs": runs}


# -- TensorBoard event files ----------------------------------------------------------

TB_SCALARS = {"probe/clean_acc": "probe_clean_acc", "probe/fgsm_acc": "probe_fgsm_acc",
              "probe/pgd_acc": "probe_pgd_acc", "train/loss": "train_loss",
              "train/acc": "train_acc", "train/lr": "lr", "aae/count": "aae_count",
              "aae/fraction": "aae_fraction", "aae/ce_drop": "aae_ce_drop",
              "aae/logit_var": "aae_logit_var", "aae/nae_logit_var": "nae_logit_var",
              "co/flag": "co_flag"}


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1      # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tf_record(data: bytes) -> bytes:
    """TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of data."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _masked_crc(n)) + data + struct.pack("<I", _masked_crc(data))


def event_bytes(wall_time: float, step: int, scalars: dict[str, float] | None = None,
                file_version: str | None = None) -> bytes:
    """A serialized tensorflow.Event: wall_time (1), step (2), file_version (3) or a
    Summary (5) of Value{tag (1), simple_value (2)} entries."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
            for tag, v in scalars.items())
        out += _field_bytes(5, summary)
    return out


def write_tensorboard(run: Run, log_dir: str) -> str:
    """One events file with the run's per-epoch scalars (step = epoch); returns its path."""
    os.makedirs(log_dir, exist_ok=True)
    for old in os.listdir(log_dir):       # one file per run: re-running replaces it
        if old.startswith("events.out.tfevents."):
            os.remove(os.path.join(log_dir, old))
    now = time.time()
    recs = [tf_record(event_bytes(now, 0, file_version="brain.Event:2"))]
    for row in run.rows:
        scalars = {tag: float(row[key]) for tag, key in TB_SCALARS.items()
                   if isinstance(row.get(key), (int, float))}
        if scalars:
            recs.append(tf_record(event_bytes(now, int(row["epoch"]), scalars)))
    path = os.path.join(log_dir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.aaer")
    atomic_write_bytes(path, b"".join(recs))
    return path


def read_tensorboard(path: str) -> list[dict[str, Any]]:
    """Parse an events file written by ``write_tensorboard`` (checks both CRCs)."""
    with open(path, "rb") as f:
        data = f.read()
    events, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        (c_len,) = struct.unpack_from("<I", data, i + 8)
        if c_len != _masked_crc(data[i:i + 8]):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        body = data[i + 12:i + 12 + n]
        (c_body,) = struct.unpack_from("<I", data, i + 12 + n)
        if c_body != _masked_crc(body):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        events.append(_parse_event(body))
        i += 16 + n
    return events


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(b, i)
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, v


def _parse_event(b: bytes) -> dict[str, Any]:
    ev: dict[str, Any] = {"scalars": {}}
    for num, v in _fields(b):
        if num == 1:
            ev["wall_time"] = struct.unpack("<d", v)[0]
        elif num == 2:
            ev["step"] = v
        elif num == 3:
            ev["file_version"] = v.decode()
        elif num == 5:
            for vnum, value in _fields(v):
                if vnum == 1:
                    tag, simple = None, None
                    for fnum, fv in _fields(value):
                        if fnum == 1:
                            tag = fv.decode()
                        elif fnum == 2:
                            simple = struct.unpack("<f", fv)[0]
                    ev["scalars"][tag] = simple
    return ev
