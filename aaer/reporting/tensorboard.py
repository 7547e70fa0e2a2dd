"""TensorBoard event files, through torch.utils.tensorboard (the ``tensorboard`` extra).

- ``LiveWriter``: ``aaer train --tensorboard`` writes <out-dir>/tensorboard while the run
  trains: every epoch's metrics (step = epoch) and every CO-monitor probe (step = the
  optimiser step it was taken after), flushed as they come, so TensorBoard shows a run
  in progress: ``tensorboard --logdir <out-dir>/tensorboard``.
- ``write_tensorboard``: ``aaer report --tensorboard`` writes a finished (or interrupted)
  run's epochs from its metrics.jsonl.
"""
from __future__ import annotations

import os

from aaer.errors import MissingExtra
from aaer.runs import Row

# TensorBoard tag -> the key of a metrics.jsonl row
EPOCH_SCALARS = {"probe/clean_acc": Row.PROBE_CLEAN, "probe/fgsm_acc": Row.PROBE_FGSM,
                 "probe/pgd_acc": Row.PROBE_PGD, "train/loss": Row.TRAIN_LOSS,
                 "train/acc": Row.TRAIN_ACC, "train/lr": Row.LR, "aae/count": "aae_count",
                 "aae/fraction": "aae_fraction", "aae/ce_drop": "aae_ce_drop",
                 "aae/logit_var": "aae_logit_var", "aae/nae_logit_var": "nae_logit_var",
                 "aaer/reg": "aaer_reg", "co/flag": Row.CO_FLAG}
# TensorBoard tag -> the key of a probe record (per optimiser step)
PROBE_SCALARS = {"probe_by_step/clean_acc": "clean", "probe_by_step/fgsm_acc": "fgsm",
                 "probe_by_step/pgd_acc": "pgd"}


def require_tensorboard():
    """SummaryWriter, or MissingExtra (one line naming `pip install 'aaer[tensorboard]'`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtra("tensorboard", "tensorboard", "--tensorboard") from None
    return SummaryWriter


def summary_writer(log_dir: str):
    """A torch.utils.tensorboard.SummaryWriter, or a one-line error naming the extra."""
    return require_tensorboard()(log_dir=log_dir)


def _scalars(writer, tags: dict[str, str], values: dict, step: int) -> None:
    for tag, key in tags.items():
        v = values.get(key)
        if isinstance(v, (bool, int, float)):
            writer.add_scalar(tag, float(v), int(step))


class LiveWriter:
    """Listener of the trainer: one event file per (re)start of a run."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.writer = summary_writer(log_dir)      # creates log_dir

    def epoch(self, row: dict) -> None:
        _scalars(self.writer, EPOCH_SCALARS, row, row[Row.EPOCH])
        self.writer.flush()

    def probe(self, record: dict) -> None:
        _scalars(self.writer, PROBE_SCALARS, record, record["step"])

    def close(self) -> None:
        self.writer.close()


def write_tensorboard(rows: list[dict], log_dir: str) -> str:
    """One event file with a run's per-epoch scalars (step = epoch), replacing the files an
    earlier call wrote there; returns the directory."""
    writer_class = require_tensorboard()          # before anything is removed
    os.makedirs(log_dir, exist_ok=True)
    for old in os.listdir(log_dir):
        if old.startswith("events.out.tfevents."):
            os.remove(os.path.join(log_dir, old))
    writer = writer_class(log_dir=log_dir)
    for row in rows:
        _scalars(writer, EPOCH_SCALARS, row, row[Row.EPOCH])
    writer.close()
    return log_dir
