"""Exceptions and exit codes: what each failure means to the user and to the shell.

Every command maps failures the same way (aaer.cli.main):
- a user's mistake (``UsageError``: a bad setting, a missing or damaged file, a run
  directory in the wrong state, a missing optional package): exit 2, one line naming the
  value or file and what would be valid; nothing was written or changed;
- training diverged (a non-finite loss or weight): exit 3, the last good checkpoint kept;
- a stop signal: the run is checkpointed, exit 128 + the signal number;
- `aaer reproduce` with failed runs: exit 1;
- anything else is a bug in aaer (or the system refused: a full disk, no memory): the
  traceback, a line saying which, exit 1.
"""
from __future__ import annotations

import os
import signal

EXIT_FAILED_RUNS = 1
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3


class UsageError(ValueError):
    """A user's mistake, reported with exit code 2 and one line (no traceback).

    The cause is something the user chose: a setting's value (a flag, a suite file, a
    keyword of a public function), a name, a file or folder and what is in it (missing,
    damaged, the wrong layout, a checkpoint of another model), a package that is not
    installed, a download that failed. Everything else (one of aaer's functions handed a
    wrong type or shape by another, a state aaer itself built in the same process) stays
    a ValueError, TypeError or RuntimeError: a bug, reported with its traceback.
    """


class MissingFile(UsageError, FileNotFoundError):
    """A file or folder the user named, or one that a data set or a run directory needs,
    does not exist."""


class DownloadFailed(UsageError, ConnectionError):
    """An official file could not be fetched (the network or the server)."""


class DamagedFile(UsageError):
    """A file the program reads is missing a part, unreadable or not what it should be."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


class MissingExtra(UsageError):
    """A package is not installed: one line that says how to get it. ``extra``: the aaer
    extra that installs it, or None for one of aaer's own dependencies."""

    def __init__(self, package: str, extra: str | None, needed_for: str):
        self.package, self.extra = package, extra
        how = (f"pip install 'aaer[{extra}]' (or pip install {package})" if extra else
               f"pip install {package} (aaer depends on it: reinstall aaer)")
        super().__init__(f"{needed_for} needs the {package} package, which is not installed: "
                         f"{how}")


def require(module: str, package: str, extra: str | None, needed_for: str):
    """Import ``module``, or MissingExtra naming the package to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(package, extra, needed_for) from None


class TrainingInterrupted(Exception):
    """A stop signal arrived; the run was checkpointed and can be resumed."""

    def __init__(self, signum: int, out_dir: str, epoch: int, step: int, checkpoint: str):
        self.signum, self.out_dir, self.epoch, self.step = signum, out_dir, epoch, step
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} in epoch {epoch} after step {step}; "
                         f"checkpoint written to {checkpoint}. "
                         f"Continue with: aaer train --resume {out_dir}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or weight: training stopped, the last good checkpoint is kept."""


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "no signal"


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0
