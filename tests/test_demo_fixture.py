"""`aaer demo --rollback` end to end on the real data set (slow: the CO fixture trained three
times, two runs at a time, one thread each, about 7 minutes): RS-FGSM must overfit
catastrophically and the monitor must say so; with --on-co rollback the same run must be
rolled back and end out of CO, far more robust.

What is asserted about RS-AAER held in 9 of the 10 seeds of the README's warn vs rollback
table (seed 2 among them): no CO flagged, and a higher final PGD accuracy than RS-FGSM's.
What is asserted about the rollback held in all 8 RS-FGSM seeds flagged there: flagged at
the same epoch, rolled back to the best probe, rescued, final PGD accuracy 10 points or
more above the warn run's. Per-seed trajectories depend on the CPU's kernels (README);
seed 2 met all of this on both machines measured."""
import io

import pytest

from aaer.experiments.demo import run_demo

SEED = 2        # the demo's default


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_shows_co_for_rs_fgsm_not_for_rs_aaer_and_the_rollback_rescue(tmp_path):
    out = io.StringIO()
    res = run_demo(str(tmp_path / "demo"), seed=SEED, jobs=2, threads=1, stream=out,
                   rollback=True)
    fgsm, aaer, rescued = res["runs"]
    assert (fgsm.method, aaer.method, rescued.method) == ("rs-fgsm", "rs-aaer", "rs-fgsm")

    mon = fgsm.results["monitor"]
    assert mon["co_detected"], [r["probe_pgd_acc"] for r in fgsm.rows]
    ev = mon["events"][0]["evidence"]
    # the paper's picture: PGD accuracy collapses while FGSM accuracy holds ...
    assert ev["pgd_now"] <= 0.1 and ev["fgsm_now"] >= 0.25
    assert fgsm.rows[-1]["probe_pgd_acc"] <= 0.1
    # ... and the abnormal adversarial examples multiply
    best = mon["best_probe"]["epoch"]
    aae = [r["aae_count"] for r in fgsm.rows]
    assert aae[-1] >= 5 * max(aae[best], 100) and fgsm.rows[-1]["aae_fraction"] >= 0.2
    assert best < mon["co_epoch"] <= 8

    assert not aaer.results["monitor"]["co_detected"]
    pgd = lambda run: run.results["evaluation"]["results"]["pgd"]["acc"]
    assert pgd(aaer) > pgd(fgsm) + 0.05

    # the same run with --on-co rollback: identical up to CO (same seed, same thread count),
    # then rolled back to its best probe with a smaller step, and out of CO at the end
    rb = rescued.results["monitor"]
    assert rb["co_epoch"] == mon["co_epoch"] and len(rb["rollbacks"]) >= 1
    assert rb["rollbacks"][0]["restored_from"]["epoch"] == best
    assert rb["rescued"] and not rb["ends_in_co"]
    assert pgd(rescued) >= pgd(fgsm) + 0.1

    text = out.getvalue()
    assert res["verdict"][0].startswith("CO happened: rs-fgsm at epoch")
    assert res["verdict"][1].startswith("No CO: rs-aaer")
    assert res["verdict"][2].startswith("With --on-co rollback: rs-fgsm-rollback rescued")
    assert text.rstrip().splitlines()[-3:] == res["verdict"]
    assert "  rs-fgsm-rollback CO confirmed: rolled back, training again from epoch" in text
    assert f"report:  {tmp_path / 'demo' / 'report.md'}" in text
