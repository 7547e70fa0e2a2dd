"""The training engine: the loop (trainer), exact-resume state (checkpoint), the
divergence guard, precision and memory format, data parallelism, and the checks that need
the data (preflight)."""
from aaer.engine.trainer import Trainer, close_logger, make_scheduler, resolve_device

__all__ = ["Trainer", "close_logger", "make_scheduler", "resolve_device"]
