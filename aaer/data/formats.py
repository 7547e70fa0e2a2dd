"""Parsers for the binary releases: CIFAR-10/100 (python pickles, as a folder or the
.tar.gz itself), SVHN (MATLAB .mat) and MNIST-style IDX files (plain or .gz).

Each reader returns numpy uint8 images [N, C, H, W] and int64 labels [N], and raises
UsageError naming the file and what is wrong when the content is not what the format
promises. Pickles are read with an unpickler that only rebuilds numpy arrays, so a
tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np

from aaer.errors import MissingExtra, MissingFile, UsageError

CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}


def _numpy_global(module: str, name: str):
    # Old pickles name numpy.core.*, numpy >= 2 moved it to numpy._core.*; take what exists.
    for candidate in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


class _ArrayUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            import codecs
            return codecs.encode
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays "
                                         f"are allowed in a data-set pickle")
        return _numpy_global(module, name)


def _str(v):
    return v.decode("latin1") if isinstance(v, bytes) else v


def unpickle(data: bytes, where: str) -> dict:
    """Decode one CIFAR pickle (Python 2 or 3) into a dict with str keys."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # truncated files raise EOFError, garbage raises UnpicklingError etc.
        raise UsageError(f"{where} is not a readable CIFAR pickle (truncated or corrupt): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise UsageError(f"{where} holds a {type(obj).__name__}, expected a dict of arrays")
    return {_str(k): v for k, v in obj.items()}


def _cifar_batch(d: dict, labels_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in d or labels_key not in d:
        raise UsageError(f"{where} lacks '{'data' if 'data' not in d else labels_key}' "
                         f"(keys found: {sorted(d)})")
    x, y = d["data"], np.asarray(d[labels_key], dtype=np.int64)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise UsageError(f"{where}: 'data' must be uint8 of shape [N, 3072], got {got}")
    if y.shape != (x.shape[0],):
        raise UsageError(f"{where}: {x.shape[0]} images but {y.size} labels")
    return x.reshape(-1, 3, 32, 32), y


def locate_cifar(name: str, root: str) -> str:
    """The CIFAR source under `root`: the batches folder, or the official .tar.gz."""
    lay = CIFAR_LAYOUT[name]
    if os.path.isfile(root):
        return root
    if os.path.isfile(os.path.join(root, lay["meta"])):
        return root
    for candidate in (os.path.join(root, lay["folder"]), os.path.join(root, lay["archive"])):
        if os.path.exists(candidate):
            return candidate
    members = ", ".join(lay["train"] + lay["test"] + (lay["meta"],))
    raise MissingFile(
        f"{name} not found in {root}: expected the folder {lay['folder']}/ ({members}) or the "
        f"archive {lay['archive']}; pass download=True (CLI: --download) to fetch it")


def read_cifar(name: str, source: str) -> dict:
    """Parse CIFAR-10/100 from the batches folder or straight from the .tar.gz archive."""
    lay = CIFAR_LAYOUT[name]
    wanted = lay["train"] + lay["test"] + (lay["meta"],)
    if os.path.isdir(source):
        blobs = {}
        for member in wanted:
            path = os.path.join(source, member)
            if not os.path.isfile(path):
                raise MissingFile(f"{path} is missing: a {name} folder holds "
                                  f"{', '.join(wanted)}")
            with open(path, "rb") as f:
                blobs[member] = (f.read(), path)
        files = [os.path.join(source, m) for m in wanted]
    else:
        blobs = _read_tar_members(source, lay["folder"], wanted)
        files = [source]
    names = unpickle(*blobs[lay["meta"]]).get(lay["names"])
    if names is None:
        raise UsageError(f"{blobs[lay['meta']][1]} lacks '{lay['names']}'")
    classes = [_str(n) for n in names]
    split = {}
    for part in ("train", "test"):
        xs, ys = zip(*(_cifar_batch(unpickle(*blobs[m]), lay["labels"], blobs[m][1])
                       for m in lay[part]))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise UsageError(f"{name} {part} labels span [{y.min()}, {y.max()}] but the meta "
                             f"file names {len(classes)} classes")
        split[part] = (x, y)
    return {"train": split["train"], "test": split["test"], "classes": classes, "files": files}


def _read_tar_members(archive: str, folder: str, wanted: tuple[str, ...]) -> dict:
    blobs = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                parts = m.name.split("/")
                if m.isfile() and len(parts) == 2 and parts[0] == folder and parts[1] in wanted:
                    blobs[parts[1]] = (tar.extractfile(m).read(), f"{archive}:{m.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UsageError(f"{archive} is not a readable tar archive (truncated or corrupt): "
                         f"{type(e).__name__}: {e}") from e
    missing = [w for w in wanted if w not in blobs]
    if missing:
        raise UsageError(f"{archive} lacks {', '.join(folder + '/' + m for m in missing)}")
    return blobs


SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def locate_svhn(root: str) -> str:
    missing = [f for f in SVHN_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise MissingFile(f"svhn not found in {root}: missing {', '.join(missing)} (the "
                          f"cropped-digits .mat files); pass download=True (CLI: --download)")
    return root


def read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits file: X is [H, W, C, N] uint8, y is [N, 1] with 10 for digit 0."""
    try:
        import scipy.io
    except ImportError:
        raise MissingExtra("scipy", "data", "reading SVHN's .mat files") from None

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise UsageError(f"{path} is not a readable MATLAB file: {type(e).__name__}: {e}") from e
    if "X" not in mat or "y" not in mat:
        raise UsageError(f"{path} lacks the 'X' and 'y' arrays of SVHN (found {sorted(mat)})")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[2] != 3:
        raise UsageError(f"{path}: X must be uint8 [H, W, 3, N], got {x.dtype} {x.shape}")
    if x.shape[3] != y.size:
        raise UsageError(f"{path}: {x.shape[3]} images but {y.size} labels")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise UsageError(f"{path}: labels must be 1..10 (10 = digit 0), found [{y.min()}, {y.max()}]")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def read_svhn(root: str) -> dict:
    train, test = (read_svhn_mat(os.path.join(root, f)) for f in SVHN_FILES)
    return {"train": train, "test": test, "classes": [str(d) for d in range(10)],
            "files": [os.path.join(root, f) for f in SVHN_FILES]}


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (plain or gzip): magic 0x00 0x00 <type> <ndim>, big-endian uint32 dims, data."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise UsageError(f"{path} could not be read (corrupt gzip?): {type(e).__name__}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UsageError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'} "
                         f"(expected 0000 08 01 for labels or 0000 08 03 for images)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UsageError(f"{path}: IDX header promises shape {tuple(dims)} = {expected} bytes of "
                         f"data but the file holds {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def locate_idx(name: str, root: str) -> dict[str, str]:
    """Paths of the four IDX files under `root`, each plain or .gz (plain preferred)."""
    found, missing = {}, []
    for base in IDX_FILES:
        for candidate in (base, base + ".gz"):
            if os.path.isfile(os.path.join(root, candidate)):
                found[base] = os.path.join(root, candidate)
                break
        else:
            missing.append(base + "[.gz]")
    if missing:
        hint = "pass download=True (CLI: --download) to fetch them"
        if name == "fashion-mnist":
            hint = ("install Debian's copy with `apt-get install -y dataset-fashion-mnist` (into "
                    "/usr/share/datasets/fashion-mnist) or " + hint)
        raise MissingFile(f"{name} not found in {root}: missing {', '.join(missing)}; {hint}")
    return found


def read_mnist_like(paths: dict[str, str], classes: list[str]) -> dict:
    split = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        xp, yp = paths[f"{prefix}-images-idx3-ubyte"], paths[f"{prefix}-labels-idx1-ubyte"]
        x, y = read_idx(xp), read_idx(yp)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise UsageError(f"{xp}: expected uint8 images [N, H, W], got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise UsageError(f"{yp}: expected uint8 labels [N], got {y.dtype} {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise UsageError(f"{xp} has {x.shape[0]} images but {yp} has {y.shape[0]} labels")
        if y.size and y.max() >= len(classes):
            raise UsageError(f"{yp}: label {y.max()} out of range for {len(classes)} classes")
        split[part] = (x[:, None], y.astype(np.int64))
    return {"train": split["train"], "test": split["test"], "classes": classes,
            "files": list(paths.values())}
