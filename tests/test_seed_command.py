"""The seed README's command, verbatim, end to end on CPU through AAER.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers.files import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINEAGE_KEYS_HEAD = ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_seed_command_runs_end_to_end(tmp_path):
    data = tmp_path / "cifar-data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=8, n_test=6)
    out = tmp_path / "CIFAR10_RS-AAER_8"
    cmd = [sys.executable, os.path.join(ROOT, "AAER.py"), "--epoch", "1", "--clamp", "1",
           "--alpha", "1.25", "--epsilon", "8", "--lamda1", "1.0", "--lamda2", "2.5",
           "--lamda3", "1.5", "--out-dir", str(out), "--data-dir", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "train.log", "model.pt", "results.json"):
        assert (out / name).is_file(), name

    cfg = json.loads((out / "config.json").read_text())
    st = cfg["settings"]
    assert st["data"]["dataset"] == "cifar10" and st["method"]["name"] == "rs-aaer"
    assert cfg["sources"]["data.dataset"].startswith("inferred from --out-dir")
    assert cfg["sources"]["method.name"] == "seed script: --clamp 1"
    m = cfg["method_resolved"]
    assert (m["alpha"], m["clamp"], m["lamda1"], m["lamda2"], m["lamda3"]) == \
        (1.25, 1, 1.0, 2.5, 1.5)
    assert m["delta_init"] == "random" and m["mode"] == "reference"
    o = st["optim"]
    assert o["epochs"] == 1 and o["lr_max"] == 0.2 and o["batch_size"] == 128
    assert cfg["data"]["n_train"] == 40 and cfg["environment"]["torch"] == torch.__version__
    env = cfg["environment"]          # what a bit-for-bit comparison of two runs needs
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["device"] == "cpu" and env["device_name"] and env["threads"] >= 1

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["epoch"] == 0 and lines[0]["n"] == 40
    assert np.isfinite(lines[0]["train_loss"]) and 0 <= lines[0]["train_acc"] <= 1
    assert 0 <= lines[0]["aae_count"] <= 40

    log = (out / "train.log").read_text()
    assert "inferred from --out-dir" in log and "Ab NUM" in log

    state = torch.load(out / "model.pt", weights_only=True)
    assert list(state)[:3] == LINEAGE_KEYS_HEAD and state["linear.weight"].shape == (10, 512)

    res = json.loads((out / "results.json").read_text())
    ev = res["evaluation"]
    assert ev["protocol"]["name"] == "lineage" and ev["n"] == 6
    pgd = ev["results"]["pgd"]
    assert (pgd["steps"], pgd["restarts"]) == (50, 10) and pgd["alpha"] == pytest.approx(2 / 255)
    for attack in ("clean", "fgsm", "pgd"):
        assert 0.0 <= ev["results"][attack]["acc"] <= 1.0
    assert ev["results"]["pgd"]["acc"] <= ev["results"]["clean"]["acc"]


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    out = tmp_path / "CIFAR10_x"
    out.mkdir()
    (out / "results.json").write_text("{}")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "AAER.py"), "--out-dir", str(out),
                           "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert "finished run" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(os.listdir(out)) == ["results.json"]
