"""The README's by-method plot of the CO fixture's warn / rollback campaign.

    python benchmarks/co_policy_plot.py runs/co-warn runs/co-rollback --out benchmarks/results/co-fixture/co_policy.png

One column per method: probe PGD accuracy (top) and AAEs per epoch (bottom), mean over
seeds with the range shaded, for --on-co warn and --on-co rollback. A rollback run's rows
are the epochs it kept (the discarded ones are in results.json); where the rollback twin was
not run (the same computation as its warn run, see co_policy_table.py) the warn run stands
in for it, so both bands cover the same seeds; a run that stopped early counts up to its
last epoch. x: a seed's CO epoch on the warn mean.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aaer.reporting.report import seed_band  # noqa: E402
from aaer.runs import load_run  # noqa: E402
from co_fixture_campaign import needs_twin  # noqa: E402
from co_policy_table import RUN_NAME, METHODS  # noqa: E402


def runs_of(warn_dir: str, rollback_dir: str, method: str):
    """(warn runs, rollback runs) of ``method``, seed by seed."""
    warn, rollback = [], []
    named = sorted((int(m.group(2)), n) for m, n in
                   ((RUN_NAME.match(n), n) for n in os.listdir(warn_dir))
                   if m and m.group(1) == method)
    for _, name in named:
        w = os.path.join(warn_dir, name)
        if not os.path.exists(os.path.join(w, "results.json")):
            continue
        r = os.path.join(rollback_dir, name)
        warn.append(load_run(w))
        if os.path.exists(os.path.join(r, "results.json")):
            rollback.append(load_run(r))
        elif not needs_twin(w):                 # never flagged: the same computation
            rollback.append(load_run(w))
    return warn, rollback


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("warn_dir")
    p.add_argument("rollback_dir")
    p.add_argument("--out", default="co_policy.png")
    a = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {RUN_NAME.match(n).group(1) for n in os.listdir(a.warn_dir)
               if RUN_NAME.match(n) and os.path.exists(os.path.join(a.warn_dir, n, "results.json"))}
    methods = [m for m in METHODS if m in present] + sorted(present - set(METHODS))
    fig, axes = plt.subplots(2, len(methods), figsize=(4 * len(methods), 6.4), sharex=True,
                             squeeze=False)
    for col, method in enumerate(methods):
        warn, rollback = runs_of(a.warn_dir, a.rollback_dir, method)
        if not warn:
            raise SystemExit(f"no finished run of {method} in {a.warn_dir}")
        for row, key in enumerate(("probe_pgd_acc", "aae_count")):
            ax = axes[row][col]
            for runs, policy, color in ((warn, "warn", "tab:red"),
                                        (rollback, "rollback", "tab:blue")):
                if not runs:            # no rollback run of this method yet
                    continue
                # a run that stopped early (FGSM after its rollbacks, N-AAER seed 3's
                # divergence) leaves its later epochs to the others
                xs, mean, lo, hi, co = seed_band(runs, key, shared=False)
                ax.plot(xs, mean, marker="o", markersize=3, color=color,
                        label=f"--on-co {policy} ({len(runs)} runs)")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
                if policy == "warn":
                    for e in co:
                        ax.plot([e], [mean[xs.index(e)]], marker="x", color=color,
                                markersize=8, markeredgewidth=2)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{method} ({len(warn)} seeds)", fontsize=10)
                ax.legend(fontsize=7, loc="upper left")
                ax.set_ylim(-0.01, 0.6)
            else:
                ax.set_xlabel("epoch")
        axes[0][0].set_ylabel("probe PGD accuracy")
        axes[1][0].set_ylabel("AAEs per epoch (of 10,000)")
    axes[0][0].legend(fontsize=7, loc="upper left", title="mean, range shaded; x: CO (warn)",
                      title_fontsize=7)
    first = runs_of(a.warn_dir, a.rollback_dir, methods[0])[0][0].settings
    fig.suptitle(f"CO fixture, --on-co warn vs rollback ({first.data.dataset}, "
                 f"{first.model.name}, eps {first.method.epsilon:g}/255)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
