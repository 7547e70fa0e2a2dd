"""DistributedDataParallel: 2 gloo CPU processes train exactly like 1 process on the same
global batch, and only rank 0 writes.

The model has no BatchNorm: BN normalises each rank's share with that share's statistics
(per-GPU BN, as in standard DDP), which would make the two runs differ by design. It feeds
sin(30 x) to two convolutions, a curved input map under which many attack steps lower the
loss, so the AAER regulariser (summed over the ranks' global batch) is active. The attack
starts at zero (--delta-init zero) so that no per-rank random noise enters.

Run as a script (`python tests/test_ddp.py worker <aaer train flags>`) it is the worker:
it registers the test model and calls the CLI, under torchrun or alone.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "test-sin-cnn"
# seconds a 2-epoch run may take from start to exit (typically 13-16 s here); a run that
# finishes training but never exits fails the test instead of hanging it
EXIT_BOUND = 90


class SinCNN(torch.nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv1(torch.sin(30.0 * x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _register_test_model():
    """In the worker processes only: the test process's registry stays as shipped."""
    from aaer.models import register_model
    register_model(MODEL)(lambda num_classes, in_channels, image_size:
                          SinCNN(num_classes, in_channels))


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXIT_BOUND, env=env,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(4 * EXIT_BOUND)
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    from tests.helpers.files import write_cifar10
    data = tmp_path / "data"
    write_cifar10(str(data), np.random.default_rng(0), per_batch=16, n_test=4)   # 80 images
    flags = ["--dataset", "cifar10", "--data-dir", str(data), "--model", MODEL,
             "--method", "rs-aaer", "--delta-init", "zero", "--lamda2", "2.5",
             "--lamda3", "1.5", "--epochs", "2", "--batch-size", "16", "--lr-max", "0.05",
             "--eval-protocol", "quick", "--eval-batch-size", "2", "--no-progress",
             "--device", "cpu"]
    script = os.path.join(ROOT, "tests", "test_ddp.py")
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, script, "worker", *flags, "--out-dir", str(one)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
          "2", script, "worker", *flags, "--out-dir", str(two)], tmp_path)

    cfg = json.loads((two / "config.json").read_text())["performance"]
    assert (cfg["world_size"], cfg["backend"], cfg["batch_per_process"]) == (2, "gloo", 8)
    assert json.loads((one / "config.json").read_text())["performance"]["world_size"] == 1

    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == [0, 1]           # rank 0 alone wrote, once per epoch
    assert (two / "train.log").read_text().count("Total train time") == 1
    assert (two / "results.json").is_file() and (two / "model.pt").is_file()
    # the regulariser was active, so its cross-rank sums are part of what is compared
    assert all(0 < r["aae_count"] < r["n"] for r in m1) and m1[-1]["aaer_reg"] > 0
    for a, b in zip(m1, m2):
        assert b["n"] == a["n"] == 80
        assert b["aae_count"] == a["aae_count"]
        assert b["train_acc"] == a["train_acc"]
        for k in ("train_loss", "aaer_reg", "aaer_ce_var", "aaer_var_gap", "aae_logit_var"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k

    # the final evaluation was sharded over the 2 processes and equals a 1-process
    # evaluation of the model rank 0 saved
    ev = json.loads((two / "results.json").read_text())["evaluation"]
    assert ev["processes"] == 2 and ev["n"] == 4
    _run([sys.executable, script, "eval", "--checkpoint", str(two), "--protocol", "quick",
          "--batch-size", "2", "--out", str(tmp_path / "again.json")], tmp_path)
    again = json.loads((tmp_path / "again.json").read_text())
    untimed = lambda res: {a: {k: v for k, v in r.items() if k != "seconds"}
                           for a, r in res.items()}
    assert again["verdicts"] == ev["verdicts"]
    assert untimed(again["results"]) == untimed(ev["results"])

    w1 = torch.load(one / "model.pt", weights_only=True)
    w2 = torch.load(two / "model.pt", weights_only=True)
    assert list(w1) == list(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), k
    # training moved the weights (from the seed-0 initialisation both runs start at)
    torch.manual_seed(0)
    init = SinCNN(10, 3).state_dict()
    assert max((w1[k] - init[k]).abs().max().item() for k in w1) > 1e-3


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("worker", "eval"):
    sys.path.insert(0, ROOT)
    _register_test_model()
    from aaer.cli import main, run
    command = ["train"] if sys.argv[1] == "worker" else ["eval"]
    if os.environ.get("AAER_DDP_LIBRARY_EXIT"):     # benchmarks/ddp_exit_loop.py --library
        raise SystemExit(main([*command, *sys.argv[2:]]))
    run(main, argv=[*command, *sys.argv[2:]])
