"""The training engine: the loop (trainer), exact-resume state (checkpoint, sums, restore
points), the averaged model, the divergence guard, precision and memory format, data
parallelism, and the checks that need the data (preflight)."""
from aaer.engine.environment import close_logger, resolve_device
from aaer.engine.schedule import make_scheduler
from aaer.engine.trainer import Trainer

__all__ = ["Trainer", "close_logger", "make_scheduler", "resolve_device"]
