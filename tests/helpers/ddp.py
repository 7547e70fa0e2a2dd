"""The data-parallel test worker and what the tests that run it share.

Run as a script (`python tests/helpers/ddp.py worker <aaer train flags>`, alone or under
torchrun) it is the worker: it registers the test model (``MODEL``, a BatchNorm-free CNN:
BN normalises each rank's share with that share's statistics, so 2 processes could not
equal 1 by design) and calls the CLI; ``eval`` calls `aaer eval` the same way. Environment
variables script its CO probes (``PROBES_ENV``) or blow up its weights after a rollback
(``BLOW_UP_ENV``), so the tests know what the monitor sees.
"""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.abspath(__file__)
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


def register_test_model():
    """In the worker processes only: the test process's registry stays as shipped."""
    from aaer.models import register_model
    register_model(MODEL)(lambda num_classes, in_channels, image_size:
                          SinCNN(num_classes, in_channels))


def run(cmd, tmp_path, extra_env=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXIT_BOUND, env=env,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# probes the worker scripts when AAER_TEST_PROBES="pgd,pgd,...;fgsm,fgsm,...": every process
# measures the same sequence, so the rule's input is known
PROBES_ENV = "AAER_TEST_PROBES"
# AAER_TEST_BLOW_UP=1: after a rollback, the next epoch leaves a non-finite weight on every
# process (as a doubled lamda1 did to N-AAER on the CO fixture)
BLOW_UP_ENV = "AAER_TEST_BLOW_UP"


def _script_probes():
    from aaer.monitor import COMonitor
    pgd, fgsm = ([float(v) for v in part.split(",")]
                 for part in os.environ[PROBES_ENV].split(";"))
    calls = []

    def measure(self, model):
        i = len(calls)
        calls.append(i)
        return {"clean": 0.9, "fgsm": fgsm[i], "pgd": pgd[i], "seconds": 0.0}
    COMonitor.measure = measure


def _blow_up_after_a_rollback():
    from aaer.engine.trainer import Trainer
    run_epoch = Trainer.run_epoch

    def blow_up(self, epoch):
        end = run_epoch(self, epoch)
        if self.monitor.rollbacks:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return end
    Trainer.run_epoch = blow_up


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("worker", "eval"):
    sys.path.insert(0, ROOT)
    register_test_model()
    if os.environ.get(PROBES_ENV):
        _script_probes()
    if os.environ.get(BLOW_UP_ENV):
        _blow_up_after_a_rollback()
    from aaer.cli import main, run as run_cli
    command = ["train"] if sys.argv[1] == "worker" else ["eval"]
    if os.environ.get("AAER_DDP_LIBRARY_EXIT"):     # benchmarks/ddp_exit_loop.py --library
        raise SystemExit(main([*command, *sys.argv[2:]]))
    run_cli(main, argv=[*command, *sys.argv[2:]])
