"""Where a run trains: its device, seeds, the run's log and progress bar, and the record of
the machine (config.json's and results.json's ``environment``)."""
from __future__ import annotations

import logging
import os
import platform
import random
import sys
import time
from typing import Any

import numpy as np
import torch

from aaer import __version__


def resolve_device(name: str) -> torch.device:
    """auto: cuda if present, else cpu (the name itself is checked by the schema)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"aaer": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "device": str(device)}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = cpu_name()
        # the kernels torch picked: runs agree bit for bit only on the same capability
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    env["threads"] = torch.get_num_threads()
    if "CUDA_VISIBLE_DEVICES" in os.environ:      # the GPU(s) a packing executor pinned it to
        env["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_logger(out_dir: str, path: str) -> logging.Logger:
    log = logging.getLogger(f"aaer.run.{os.path.abspath(out_dir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%Y/%m/%d %H:%M:%S")
    fh = logging.FileHandler(path)
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    log.addHandler(fh)
    log.addHandler(sh)
    return log


def silent_logger(name: str) -> logging.Logger:
    """A logger that writes nothing (the processes of rank > 0)."""
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:          # the bar is a convenience: train without it
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def timed(iterable, waited: list):
    """``iterable``'s items; adds the time spent producing each to waited[0]."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak memory of training (CUDA; the CPU's peak resident set size
    is the process's own, from its start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak memory so far: CUDA's max_memory_allocated on a GPU (what the FastAT
    Benchmark reports), the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return {"peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3),
                "memory": "torch.cuda.max_memory_allocated"}
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss    # KiB on Linux
    return {"peak_memory_gb": round(kb / 2 ** 20, 3), "memory": "peak resident set (CPU)"}
