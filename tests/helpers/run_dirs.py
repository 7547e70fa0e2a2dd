"""Run directories as the trainer writes them (config.json, metrics.jsonl, results.json),
made up with known numbers for the report and demo tests: one run that overfits
catastrophically from epoch 4 (CO_RUN), one that does not (OK_RUN)."""
import json
import os

import numpy as np

CO_RUN = dict(pgd=[0.12, 0.25, 0.31, 0.2, 0.05, 0.004], fgsm=[0.2, 0.3, 0.35, 0.5, 0.7, 0.8],
              clean=[0.6, 0.7, 0.75, 0.77, 0.78, 0.78], aae=[300, 280, 450, 1900, 4800, 5200],
              co=4)
OK_RUN = dict(pgd=[0.12, 0.2, 0.24, 0.26, 0.27, 0.28], fgsm=[0.2, 0.3, 0.33, 0.35, 0.36, 0.37],
              clean=[0.55, 0.6, 0.62, 0.64, 0.65, 0.66], aae=[300, 250, 200, 180, 170, 160],
              co=None)
EVAL = {"protocol": {"name": "lineage"}, "eps": 8 / 255, "n": 10000, "seed": 0,
        "results": {"clean": {"acc": 0.81}, "fgsm": {"acc": 0.52},
                    "pgd": {"acc": 0.4567, "steps": 50, "restarts": 10, "alpha": 2 / 255,
                            "selection": "worst"}}}


def make_run(d, method, spec, evaluation=None):
    """A run directory as the trainer writes it (config.json, metrics.jsonl, results.json)."""
    os.makedirs(d, exist_ok=True)
    n = len(spec["pgd"])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"method": method, "dataset": "fashion-mnist", "model": "small-cnn",
                   "epsilon": 76.5, "seed": 3, "epochs": n, "probe_n": 500, "probe_steps": 10,
                   "data": {"n_train": 10000},
                   "method_resolved": {"alpha": 1.25, "clamp": 1}}, f)
    events = []
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for e in range(n):
            flag = spec["co"] is not None and e >= spec["co"]
            row = {"epoch": e, "lr": 0.05 * min(e + 1, n - e) / n, "train_loss": 2.0 - 0.1 * e,
                   "train_acc": 0.3 + 0.05 * e, "aae_count": spec["aae"][e],
                   "aae_fraction": spec["aae"][e] / 10000, "probe_clean_acc": spec["clean"][e],
                   "probe_fgsm_acc": spec["fgsm"][e], "probe_pgd_acc": spec["pgd"][e],
                   "co_flag": flag, "co_epoch": spec["co"] if flag else None}
            if flag:
                b = int(np.argmax(spec["pgd"][:e]))
                ev = {"epoch": e, "step": (e + 1) * 79, "response": "warn", "evidence": {
                    "pgd_now": spec["pgd"][e], "pgd_ref": spec["pgd"][b],
                    "pgd_drop": spec["pgd"][b] - spec["pgd"][e], "ref_epoch": b,
                    "ref_step": (b + 1) * 79, "fgsm_now": spec["fgsm"][e],
                    "fgsm_ref": spec["fgsm"][b], "clean_now": spec["clean"][e],
                    "clean_ref": spec["clean"][b], "rule": "r"}}
                row["co_events"] = [ev]
                events.append(ev)
            f.write(json.dumps(row) + "\n")
    results = {"train_seconds": 123.4, "monitor": {
        "probe": {"n": 500, "source": "the first 500 test points", "pgd_steps": 10,
                  "pgd_alpha": 0.075, "seed": 3, "rule": {"text": "the rule text"}},
        "co_detected": spec["co"] is not None, "co_epoch": spec["co"], "events": events,
        "rollbacks": [], "stopped": None}}
    if evaluation:
        results["evaluation"] = evaluation
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(results, f)
    return d
