"""The CO fixture on the real data set: RS-FGSM must overfit catastrophically and the
monitor must say so (slow: two runs of the fixture side by side, a few minutes)."""
import os

import pytest

from aaer.demo import train_side_by_side, co_fixture_config, load_fixture_data
from aaer.report import load_run

# seeds whose RS-FGSM runs hit CO early in the fixture table (README): CO_SEEDS
CO_SEEDS = (1, 2)


@pytest.mark.slow
def test_rs_fgsm_hits_co_in_the_fixture_and_the_monitor_flags_it(tmp_path):
    load_fixture_data()            # Fashion-MNIST (Debian's package); says how to get it
    cfgs = []
    for seed in CO_SEEDS:
        cfg = co_fixture_config("rs-fgsm", seed, str(tmp_path / f"rs-fgsm-{seed}"))
        cfg.eval_protocol, cfg.progress = None, False
        cfgs.append(cfg)
    with open(os.devnull, "w") as quiet:
        train_side_by_side(cfgs, None, jobs=2, threads=1, stream=quiet)
    for cfg in cfgs:
        run = load_run(cfg.out_dir)
        mon = run.results["monitor"]
        assert mon["co_detected"], (cfg.seed, [r["probe_pgd_acc"] for r in run.rows])
        onset = mon["co_epoch"]
        ev = mon["events"][0]["evidence"]
        # the paper's picture: PGD accuracy collapses while FGSM accuracy holds ...
        assert ev["pgd_now"] <= 0.1 and ev["fgsm_now"] >= 0.25
        assert run.rows[-1]["probe_pgd_acc"] <= 0.1
        # ... and the abnormal adversarial examples multiply
        best = mon["best_probe"]["epoch"]
        aae = [r["aae_count"] for r in run.rows]
        assert aae[-1] >= 5 * max(aae[best], 100) and run.rows[-1]["aae_fraction"] >= 0.2
        assert best < onset <= 8
