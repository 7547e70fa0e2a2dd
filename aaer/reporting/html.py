"""report.html: the runs as one self-contained web page, like a benchmark's leaderboard.

``render_html(runs, plots, out_dir)`` returns a page with the results table (one row per run:
method, model, data set, eps, norm, seed, clean / PGD / AutoAttack accuracy of the final
evaluation, what became of CO, epochs, wall time, peak memory), each run's name linking to
its folder (relative to ``out_dir``, where the page goes), the evaluation protocols, and the
report's PNG plots. It needs nothing at view time: the CSS and the script are inline, the
plots are data URIs, and its Content-Security-Policy lets it load nothing else.

Clicking a column header sorts by it (numbers as numbers, missing values last, a second
click reverses); the box above the table keeps the runs whose method contains its text.
Every value is HTML-escaped; nothing is interpolated into the script.
"""
from __future__ import annotations

import base64
import html
import math
import os
import time
from urllib.parse import quote

from aaer.evaluation import eps_text, eval_protocol_text
from aaer.runs import Outcome, Run
from aaer.threat import pixel_eps

# what became of a run's CO, best first (the sort order of the column), and its words for
# runs written before the monitor wrote its own sentence
OUTCOME_ORDER = (Outcome.NO_CO, Outcome.RESCUED, Outcome.WARNED, Outcome.STOPPED,
                 Outcome.STILL_IN_CO, Outcome.NOT_RESCUED)
OUTCOME_WORDS = {Outcome.NO_CO: "no CO", Outcome.WARNED: "CO, warned",
                 Outcome.STOPPED: "CO, stopped", Outcome.RESCUED: "rescued",
                 Outcome.NOT_RESCUED: "not rescued", Outcome.STILL_IN_CO: "still in CO"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:1.5em;color:#1b1f23;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.meta{color:#57606a;margin:0 0 1em}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f6f8fa;position:sticky;top:0}
th button{all:unset;cursor:pointer;font-weight:600}
th button:focus-visible{outline:2px solid #0969da}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#f6f8fa}
td.co-bad{color:#b42318;font-weight:600}td.co-good{color:#1a7f37}
.controls{margin:.5em 0}.controls input{font:inherit;padding:.2em .4em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9em}
ul.protocols{font-size:.9em;color:#57606a}
"""

# sorts and filters #runs; reads the cells' data-sort, writes nothing but the rows' order,
# their hidden flag, the headers' aria-sort and the count
SCRIPT = """
(function () {
  var table = document.getElementById("runs"), body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function sortBy(col) {
    var th = heads[col], num = th.getAttribute("data-type") === "num";
    var now = th.getAttribute("aria-sort");
    var dir = now === "ascending" ? -1 : now === "descending" ? 1
            : (th.getAttribute("data-first") === "descending" ? -1 : 1);
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
      if (x === "" || y === "") { return (x === "") - (y === ""); }   /* missing: last */
      if (num) { return dir * (parseFloat(x) - parseFloat(y)); }
      return dir * x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  }
  heads.forEach(function (th, col) {
    var b = th.querySelector("button");
    if (b) { b.addEventListener("click", function () { sortBy(col); }); }
  });
  var box = document.getElementById("method-filter"), count = document.getElementById("shown");
  var mcol = heads.findIndex(function (h) { return h.id === "col-method"; });
  function filter() {
    var q = box.value.trim().toLowerCase(), shown = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var keep = r.cells[mcol].textContent.toLowerCase().indexOf(q) !== -1;
      r.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    count.textContent = shown + " of " + body.rows.length + " runs";
  }
  box.addEventListener("input", filter);
  filter();
})();
"""

# the page may load nothing: its images are data URIs, its style and script inline
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def run_href(run: Run, out_dir: str) -> str:
    """The run's folder relative to the page, as a URL path ('./' for the page's own)."""
    rel = os.path.relpath(os.path.abspath(run.path), os.path.abspath(out_dir))
    return "./" if rel == "." else quote(rel.replace(os.sep, "/")) + "/"


def _number(x) -> float | None:
    """A finite number from results.json, else None (shown and sorted as missing)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


Cell = tuple[str, str, str, str]      # text shown, sort key ('' = missing), title, CSS class


def co_cell(run: Run) -> Cell:
    """What became of the run's CO: the monitor's own sentence (or its kind's words), the
    CO epoch; sorted by OUTCOME_ORDER."""
    co = run.co_epoch()
    if not run.finished:                 # the monitor's verdict comes with results.json
        return ("unfinished" + ("" if co is None else f" (CO epoch {co})"), "",
                "no results.json yet", "")
    kind = run.outcome()
    if kind is None:
        return "no monitor", "", "trained without the CO monitor's probe (--probe-n)", ""
    text = run.results["monitor"].get("outcome") or OUTCOME_WORDS[kind]
    if co is not None and kind is not Outcome.NO_CO:
        text += f" (CO epoch {co})"
    good = kind in (Outcome.NO_CO, Outcome.RESCUED)
    return text, str(OUTCOME_ORDER.index(kind)), kind.value, "co-good" if good else "co-bad"


def cells(run: Run) -> list[Cell]:
    """The run's row, one Cell per column of COLUMNS after 'run'."""
    c = run.settings
    res = run.results or {}
    ev = res.get("evaluation") or {}
    proto = eval_protocol_text(ev) if ev else ""
    norm = str(c.method.norm)
    eps = pixel_eps(c.method.epsilon, norm)
    out = [(run.method, run.method, "", ""), (str(c.model.name), str(c.model.name), "", ""),
           (str(c.data.dataset), str(c.data.dataset), "", ""),
           (eps_text(eps, norm).replace(" (L2)", ""), repr(eps), "", "num"),
           (norm, norm, "", ""), (str(run.seed), str(run.seed), "", "num")]
    for attack in ("clean", "pgd", "autoattack"):
        a = _number(((ev.get("results") or {}).get(attack) or {}).get("acc"))
        out.append(("-", "", "not evaluated", "num") if a is None
                   else (f"{100 * a:.2f}", repr(a), proto, "num"))
    out.append(co_cell(run))
    out.append((f"{len(run.rows)}/{c.optim.epochs}", str(len(run.rows)), "epochs run / planned",
                "num"))
    cost = res.get("cost") or {}
    secs = _number(cost.get("train_seconds", res.get("train_seconds")))
    out.append(("unfinished" if not run.finished else "-", "", "no training time recorded",
                "num") if secs is None
               else (_seconds(secs), repr(secs), f"{secs:.1f} s of training", "num"))
    mem = _number(cost.get("peak_memory_gb"))
    out.append(("-", "", "not recorded", "num") if mem is None
               else (f"{mem:.2f}", repr(mem), str(cost.get("memory") or ""), "num"))
    return out


# (id, header, sort type, first click): accuracies sort best (highest) first
COLUMNS = (("run", "run", "text", "ascending"), ("method", "method", "text", "ascending"),
           ("model", "model", "text", "ascending"), ("dataset", "data set", "text", "ascending"),
           ("eps", "eps", "num", "ascending"), ("norm", "norm", "text", "ascending"),
           ("seed", "seed", "num", "ascending"), ("clean", "clean (%)", "num", "descending"),
           ("pgd", "PGD (%)", "num", "descending"),
           ("autoattack", "AutoAttack (%)", "num", "descending"),
           ("co", "CO outcome", "num", "ascending"), ("epochs", "epochs", "num", "ascending"),
           ("time", "wall time", "num", "ascending"),
           ("memory", "peak memory (GB)", "num", "ascending"))


def table_html(runs: list[Run], out_dir: str) -> list[str]:
    lines = ['<div class="scroll"><table id="runs">', "<thead><tr>"]
    lines += [f'<th id="col-{cid}" data-type="{kind}" data-first="{first}" aria-sort="none">'
              f'<button type="button">{esc(head)}</button></th>'
              for cid, head, kind, first in COLUMNS]
    lines.append("</tr></thead><tbody>")
    for run in runs:
        row = [f'<td data-sort="{esc(run.label)}"><a href="{esc(run_href(run, out_dir))}">'
               f"{esc(run.label)}</a></td>"]
        for text, key, title, css in cells(run):
            attrs = f' class="{css}"' if css else ""
            attrs += f' title="{esc(title)}"' if title else ""
            row.append(f'<td data-sort="{esc(key)}"{attrs}>{esc(text)}</td>')
        lines.append("<tr>" + "".join(row) + "</tr>")
    lines.append("</tbody></table></div>")
    return lines


def plot_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def render_html(runs: list[Run], plots: list[str], out_dir: str,
                captions: dict[str, str] | None = None) -> str:
    """The page for ``runs`` (labelled), with ``plots`` (PNG paths) embedded; ``out_dir``:
    where the page will be, for the links to the runs."""
    from aaer import __version__
    captions = captions or {}
    methods = sorted({r.method for r in runs})
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>aaer report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>aaer report</h1>",
             f'<p class="meta">{len(runs)} run(s); written '
             f'{esc(time.strftime("%Y-%m-%d %H:%M:%S"))} by aaer {esc(__version__)}. '
             "Accuracies are the final evaluation's "
             "(results.json; hover a number for its protocol); the CO outcome is the CO "
             "monitor's. Click a column header to sort, again to reverse.</p>",
             '<div class="controls"><label for="method-filter">Filter by method: </label>'
             '<input id="method-filter" type="search" list="methods" '
             'placeholder="e.g. aaer" autocomplete="off"> '
             '<span id="shown" aria-live="polite"></span>',
             '<datalist id="methods">' + "".join(f'<option value="{esc(m)}">' for m in methods)
             + "</datalist></div>"]
    lines += table_html(runs, out_dir)
    evaluated = [r for r in runs if (r.results or {}).get("evaluation")]
    if evaluated:
        lines += ["<h2>Evaluation protocols</h2>", '<ul class="protocols">']
        lines += [f"<li>{esc(r.label)}: {esc(eval_protocol_text(r.results['evaluation']))}</li>"
                  for r in evaluated]
        lines.append("</ul>")
    if plots:
        lines.append("<h2>Plots</h2>")
    for p in plots:
        name = os.path.basename(p)
        cap = captions.get(name, name)
        lines += [f'<figure><img src="{plot_uri(p)}" alt="{esc(cap)}" data-name="{esc(name)}">',
                  f"<figcaption>{esc(cap)} ({esc(name)})</figcaption></figure>"]
    lines += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(lines) + "\n"
