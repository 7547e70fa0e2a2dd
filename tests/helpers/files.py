"""Data set files written the way their releases are, for tests that load real formats:
CIFAR pickles (as Python 2 + numpy 1 wrote them), IDX (MNIST family), images, archives;
and ``snapshot``, every file under a folder with its bytes (to show nothing changed)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2 + numpy 1 wrote for the original CIFAR pickles: bytes and str as
    Python 2 `str` opcodes (BINSTRING), numpy's functions under `numpy.core`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = pickle.whichmodule(obj, obj.__qualname__).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_arrays(rng, n):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(folder, rng, per_batch=4, n_test=5):
    """cifar-10-batches-py/ under `folder`; returns (train_x, train_y, test_x, test_y, names)."""
    root = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)
    names = [f"class{i}".encode() for i in range(10)]
    with open(os.path.join(root, "batches.meta"), "wb") as f:
        f.write(py2_pickle({b"num_cases_per_batch": per_batch, b"label_names": names,
                            b"num_vis": 3072}))
    xs, ys = [], []
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = per_batch if i < 5 else n_test
        x = cifar_arrays(rng, n)
        y = [int(v) for v in rng.integers(0, 10, n)]
        with open(os.path.join(root, fname), "wb") as f:
            f.write(py2_pickle({b"batch_label": f"batch {i}".encode(), b"labels": y,
                                b"data": x, b"filenames": [b"f.png"] * n}))
        xs.append(x)
        ys.append(y)
    train_x = np.concatenate(xs[:5]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate(ys[:5])
    return train_x, train_y, xs[5].reshape(-1, 3, 32, 32), np.array(ys[5]), [n.decode() for n in names]


def write_cifar100(folder, rng, n_train=6, n_test=4):
    root = os.path.join(folder, "cifar-100-python")
    os.makedirs(root, exist_ok=True)
    names = [f"fine{i}" for i in range(100)]
    with open(os.path.join(root, "meta"), "wb") as f:  # a Python 3 re-save, str keys
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]},
                    f, protocol=2)
    out = []
    for fname, n in (("train", n_train), ("test", n_test)):
        x = cifar_arrays(rng, n)
        fine = rng.integers(0, 100, n)
        with open(os.path.join(root, fname), "wb") as f:
            f.write(py2_pickle({b"filenames": [b"a"] * n, b"batch_label": b"x",
                                b"fine_labels": [int(v) for v in fine],
                                b"coarse_labels": [int(v) // 5 for v in fine], b"data": x}))
        out += [x.reshape(-1, 3, 32, 32), fine]
    return (*out, names)


def tar_folder(folder, member_root, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(folder, member_root), arcname=member_root)
    return archive


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + \
        arr.astype(np.uint8).tobytes()


def write_idx_set(folder, rng, n_train=7, n_test=3, gz=True, size=28):
    os.makedirs(folder, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            name = os.path.join(folder, f"{prefix}-{kind}")
            if gz:
                with gzip.open(name + ".gz", "wb") as f:
                    f.write(idx_bytes(arr))
            else:
                with open(name, "wb") as f:
                    f.write(idx_bytes(arr))
        data[prefix] = (x, y)
    return data


def save_image(path, arr):
    """Write uint8 HxW (grayscale) or HxWx3 array with pillow; format from the extension."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def zip_folder(folder, archive, arc_prefix=""):
    with zipfile.ZipFile(archive, "w") as zf:
        for here, _, files in os.walk(folder):
            for f in sorted(files):
                full = os.path.join(here, f)
                zf.write(full, arc_prefix + os.path.relpath(full, folder).replace(os.sep, "/"))
    return archive


def snapshot(path):
    """Every file under path with its bytes (None when path does not exist)."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return open(path, "rb").read()
    out = {}
    for here, _, names in os.walk(path):
        for n in names:
            full = os.path.join(here, n)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def linear_checkpoint_dir(tmp_path, n_test: int) -> str:
    """A folder `aaer eval --checkpoint` reads: a seeded linear model's model.pt and a flat
    config.json, over small Fashion-MNIST IDX files (16 training, ``n_test`` test images)
    in tmp_path/fmnist."""
    import json

    import torch

    from aaer.data import load_dataset
    from aaer.models import build
    fm = os.path.join(str(tmp_path), "fmnist")
    write_idx_set(fm, np.random.default_rng(0), n_train=16, n_test=n_test)
    data = load_dataset("fashion-mnist", fm, cache_dir=os.path.join(str(tmp_path), "cache"))
    torch.manual_seed(0)
    model = build("linear", data.num_classes, data.in_channels, data.image_size,
                  data.mean, data.std)
    torch.save(model.net.state_dict(), os.path.join(str(tmp_path), "model.pt"))
    with open(os.path.join(str(tmp_path), "config.json"), "w") as f:
        json.dump({"dataset": "fashion-mnist", "model": "linear", "epsilon": 8.0,
                   "data_dir": fm}, f)
    return str(tmp_path)
