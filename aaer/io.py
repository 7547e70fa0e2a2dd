"""Files: atomic writes (a reader never sees a half-written config, metric line or
checkpoint) and JSON readers that name the file and what to do when it is damaged."""
from __future__ import annotations

import json
import os
import tempfile

import torch

from aaer.errors import DamagedFile


def _atomic(path: str, write) -> None:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(path: str) -> None:
    """fsync a directory, so a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: str, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def append_jsonl(path: str, obj) -> None:
    """Append one JSON line; the line is written with a single write call and fsynced."""
    line = (json.dumps(obj) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str, fix: str, *, kind: type = dict):
    """The JSON object in ``path``; DamagedFile (naming the file and ``fix``) when it is
    missing, unreadable, not JSON, or not a ``kind``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DamagedFile(path, "no such file", fix) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedFile(path, f"cannot be read ({e})", fix) from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise DamagedFile(path, f"is not valid JSON ({e})", fix) from None
    if not isinstance(obj, kind):
        raise DamagedFile(path, f"holds a JSON {type(obj).__name__}, not a "
                          f"{'JSON object' if kind is dict else kind.__name__}", fix)
    return obj


def read_jsonl(path: str, fix: str = "it is written by aaer; restore it or remove the "
               "damaged lines") -> list[dict]:
    """One JSON object per line ([] when the file does not exist). A damaged line raises
    DamagedFile with its line number, except a last line cut short by a kill, which is
    left out (the writer appends whole lines, so only the last can be partial)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedFile(path, f"cannot be read ({e})", fix) from None
    out = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if i == last and i == len(lines) - 1:     # no newline after it: cut short
                break
            raise DamagedFile(path, f"line {i + 1} is not valid JSON ({e})", fix) from None
        if not isinstance(row, dict):
            raise DamagedFile(path, f"line {i + 1} is not a JSON object", fix)
        out.append(row)
    return out

