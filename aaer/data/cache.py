"""Decoded-data cache: the uint8 tensors of a parsed data set, saved with torch.save and
reloaded with torch.load(weights_only=True), so a second load skips decoding.

An entry is keyed by the data-set name and the resolved source path, and records the size
and mtime_ns of every source file it was built from; it is rebuilt when any of them changed
or disappeared. Entries are written atomically (temp file + os.replace).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

import torch

FORMAT = 1


def _writable(folder: str) -> bool:
    # os.access says yes to root for any folder, so also honour the folder's write bits
    # (read-only shared data sets are marked r-x) and leave package-managed /usr alone.
    try:
        st = os.stat(folder)
    except OSError:
        return False
    real = os.path.realpath(folder)
    return (os.access(folder, os.W_OK) and bool(st.st_mode & 0o222)
            and not (real + "/").startswith("/usr/"))


def default_cache_dir(data_dir: str) -> str:
    """`<data_dir>/.aaer_cache` when that folder is writable, else ~/.cache/aaer (or
    $XDG_CACHE_HOME/aaer). For a data_dir that is a file (an archive), its folder counts."""
    base = data_dir if os.path.isdir(data_dir) else os.path.dirname(os.path.abspath(data_dir))
    if _writable(base):
        return os.path.join(base, ".aaer_cache")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "aaer")


def cache_path(cache_dir: str, name: str, source: str) -> str:
    key = hashlib.sha1(os.path.realpath(source).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{name}-{key}.pt")


def _stats(files: list[str]) -> torch.Tensor:
    rows = []
    for f in files:
        st = os.stat(f)
        rows.append((st.st_size, st.st_mtime_ns))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


def load(path: str, name: str, source: str) -> dict | None:
    """The cached entry at `path` if it exists and every recorded source file is unchanged."""
    if not os.path.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        warnings.warn(f"ignoring unreadable data cache {path} ({type(e).__name__}: {e}); "
                      f"rebuilding it")
        return None
    if (not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("name") != name
            or entry.get("source") != os.path.realpath(source)):
        return None
    tensors = ("train_x", "train_y", "test_x", "test_y", "stats")
    if not all(isinstance(entry.get(k), torch.Tensor) for k in tensors) or \
            not isinstance(entry.get("files"), list) or \
            not isinstance(entry.get("classes"), list):
        warnings.warn(f"ignoring incomplete data cache {path}; rebuilding it")
        return None
    try:
        now = _stats(entry["files"])
    except OSError:  # a source file vanished: rebuild (the parser then names what is missing)
        return None
    if not torch.equal(now, entry["stats"]):
        return None
    return entry


def save(path: str, name: str, source: str, parsed: dict) -> None:
    """Write the entry atomically; a cache that cannot be written only costs a warning."""
    # create the folder before taking the stats: it may sit inside the watched tree
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        warnings.warn(f"could not create the data cache folder for {path}: {e}")
        return
    entry = {
        "format": FORMAT, "name": name, "source": os.path.realpath(source),
        "files": [os.path.realpath(f) for f in parsed["files"]],
        "stats": _stats(parsed["files"]),
        "classes": list(parsed["classes"]),
        "train_x": parsed["train_x"], "train_y": parsed["train_y"],
        "test_x": parsed["test_x"], "test_y": parsed["test_y"],
    }
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a data cache is not secret
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"could not write the data cache {path}: {e}")
