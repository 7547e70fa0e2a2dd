"""The data sets aaer trains on, loaded from their real release formats into uint8 tensors.

`load_dataset(name, data_dir)` finds the files (or the official archive) under `data_dir`,
optionally downloads them first (verified by MD5), parses them, and keeps the decoded
tensors in a cache so the next load is fast. Mean/std are the per-channel values of the
reference recipe (SPEC §3); the model's normalisation layer uses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from aaer.errors import MissingFile, UsageError
from . import cache, formats, images, streaming
from .download import fetch

DATASETS = ("cifar10", "cifar100", "svhn", "tinyimagenet", "imagenet100", "imagefolder", "mnist",
            "fashion-mnist")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

_ALIASES = {
    "cifar-10": "cifar10", "cifar-100": "cifar100", "tiny-imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet", "tinyimagenet200": "tinyimagenet",
    "image-folder": "imagefolder", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "imagenet-100": "imagenet100", "imagenet_100": "imagenet100",
}

_C100_MEAN, _C100_STD = (0.50708, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": (_C100_MEAN, _C100_STD),
    "svhn": ((0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744)),
    "tinyimagenet": (_C100_MEAN, _C100_STD),
    "imagefolder": (_IMAGENET_MEAN, _IMAGENET_STD),
    "imagenet100": (_IMAGENET_MEAN, _IMAGENET_STD),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

# Training settings a data set's reference recipe changes (SPEC §2, §3); the rest is
# CIFAR's (30 epochs, cyclic lr 0 -> 0.2 -> 0 peaking at 1/2, no warm-up).
TRAINING_DEFAULTS = {
    "svhn": {"epochs": 15, "lr_max": 0.05, "lr_peak": 0.4, "warmup_epochs": 5.0},
    # the official Imagenet-100 script: its ResNet-18 variant on 224 crops, otherwise the
    # CIFAR recipe (30 epochs, cyclic 0.2, batch 128)
    "imagenet100": {"model": "resnet18-imagenet", "image_size": 224},
}


def training_defaults(name: str) -> dict:
    """The training settings data set ``name`` changes (flat setting names)."""
    return dict(TRAINING_DEFAULTS.get(name, {}))


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
_DIGITS = [str(d) for d in range(10)]


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor   # uint8 [M, C, H, W]
    test_y: torch.Tensor   # int64 [M]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    def __repr__(self) -> str:
        c, h, w = self.train_x.shape[1:]
        return (f"Dataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
                f"shape={c}x{h}x{w}, classes={self.num_classes}, source={self.source!r})")


def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def augmentation_for(dataset: Dataset) -> tuple[int, bool]:
    """(random-crop padding, horizontal flip) of the reference recipe: pad 4 + flip at 32x32,
    pad 8 + flip at 64x64 (size // 8 in general); none for the MNIST family."""
    if dataset.name in ("mnist", "fashion-mnist") or streamed(dataset):
        return 0, False         # streamed sets: random-resized crop + flip in the stream
    return dataset.image_size // 8, True


def streamed(dataset: Dataset) -> bool:
    return isinstance(dataset.train_x, streaming.FileImages)


def _locate(name: str, root: str) -> str:
    if name in ("cifar10", "cifar100"):
        return formats.locate_cifar(name, root)
    if name == "svhn":
        return formats.locate_svhn(root)
    if name == "tinyimagenet":
        return images.locate_tinyimagenet(root)
    if name in ("mnist", "fashion-mnist"):
        formats.locate_idx(name, root)
        return root
    if not os.path.exists(root):
        raise MissingFile(f"image folder {root} does not exist: expected a directory or a "
                          f".zip holding train/<class>/*.jpg|png and test/<class>/ (or val/)")
    return root


# name -> parser(source) -> {"train": (x, y), "test": (x, y), "classes": [...], "files": [...]}
PARSERS = {
    "cifar10": lambda src: formats.read_cifar("cifar10", src),
    "cifar100": lambda src: formats.read_cifar("cifar100", src),
    "svhn": formats.read_svhn,
    "tinyimagenet": images.read_tinyimagenet,
    "imagefolder": images.read_image_folder,
    "mnist": lambda src: formats.read_mnist_like(formats.locate_idx("mnist", src), _DIGITS),
    "fashion-mnist": lambda src: formats.read_mnist_like(
        formats.locate_idx("fashion-mnist", src), FASHION_MNIST_CLASSES),
}


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.require(a, requirements=["C", "W"])).to(dtype)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, rounded to 4 digits (via a
    histogram of the 256 grey levels, so no float copy of the data set is made)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        h = sum(torch.bincount(x[i:i + 4096, c].reshape(-1).long(), minlength=256)
                for i in range(0, len(x), 4096)).double()
        m = (h * levels).sum() / h.sum()
        mean.append(round(m.item(), 4))
        std.append(round(((h * (levels - m) ** 2).sum() / h.sum()).sqrt().item(), 4))
    return tuple(mean), tuple(std)


def _default_root(name: str, download: bool) -> str:
    if name == "imagefolder":
        raise UsageError("imagefolder needs data_dir: a directory or .zip holding "
                         "train/<class>/ and test/<class>/ (or val/)")
    if name == "fashion-mnist" and (os.path.isdir(DEBIAN_FASHION_MNIST) or not download):
        return DEBIAN_FASHION_MNIST
    return os.path.join(os.environ.get("AAER_DATA_DIR", "data"), name)


# Folder layouts list their images class by class; these data sets get a fixed shuffle.
FOLDER_ORDERED = ("imagefolder", "tinyimagenet")
ORDER_SEED = 0


def interleave(entry: dict) -> dict:
    """Put a folder data set's images in one fixed pseudo-random order (seed ORDER_SEED).

    On disk they are grouped by class, so "the first N" images (--n-train, --n-eval, the
    monitor's probe) would be one class. The order is the same on every machine and run;
    training batches are shuffled per epoch as usual.
    """
    out = dict(entry)
    for split in ("train", "test"):
        n = entry[split + "_y"].shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(ORDER_SEED))
        out[split + "_x"] = entry[split + "_x"][perm]
        out[split + "_y"] = entry[split + "_y"][perm]
    return out


def load_streamed(name: str, source: str, image_size: int, workers: int | None) -> Dataset:
    """ImageNet-100 or a mixed-size image folder, streamed (aaer.data.streaming): the
    training images stay files, the test images are decoded once with the test transform."""
    workers = streaming.default_workers() if workers is None else workers
    store, classes, splits = streaming.scan(source, "imagenet100" if name == "imagenet100"
                                            else "imagefolder")
    out = {}
    for split, (rels, labels) in splits.items():   # one fixed class-mixed order, as folders
        perm = torch.randperm(len(rels), generator=torch.Generator().manual_seed(ORDER_SEED))
        out[split] = ([rels[i] for i in perm.tolist()], labels[perm])
    train_x = streaming.FileImages(store, out["train"][0], image_size, workers)
    test_x = streaming.decode_test(store, out["test"][0], image_size, workers)
    mean, std = NORMALIZATION[name]
    return Dataset(name=name, train_x=train_x, train_y=out["train"][1], test_x=test_x,
                   test_y=out["test"][1], classes=list(classes), mean=tuple(mean),
                   std=tuple(std), source=os.path.realpath(source))


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 cache_dir: str | None = None, image_size: int | None = None,
                 workers: int | None = None) -> Dataset:
    """Load data set `name` (one of DATASETS) from `data_dir`.

    data_dir is the folder holding the release files (for CIFAR also its parent, or the
    .tar.gz itself; for imagefolder/tinyimagenet a folder or a .zip). When None: Debian's
    /usr/share/datasets/fashion-mnist for fashion-mnist, else $AAER_DATA_DIR/<name> (default
    ./data/<name>). download=True fetches the official files (MD5-checked) when missing.
    cache_dir holds the decoded tensors (default <data_dir>/.aaer_cache, or ~/.cache/aaer
    when data_dir is read-only).
    """
    name = canonical_name(name)
    root = os.fspath(data_dir) if data_dir is not None else _default_root(name, download)
    if name == "imagenet100" or (name == "imagefolder" and image_size is not None):
        if download:
            raise UsageError(f"download=True is not available for {name} (it has no official "
                             "archive to fetch); pass the folder, .zip or .tar as data_dir")
        source = streaming.locate_imagenet100(root) if name == "imagenet100" else root
        return load_streamed(name, source, image_size or 224, workers)
    if download:
        if name == "imagefolder":
            raise UsageError("download=True is not available for imagefolder (it has no official "
                             "archive); pass the folder or .zip as data_dir")
        try:
            source = _locate(name, root)
        except FileNotFoundError:
            fetch(name, root)
            source = _locate(name, root)
    else:
        source = _locate(name, root)
    cache_dir = cache_dir if cache_dir is not None else cache.default_cache_dir(root)
    entry_path = cache.cache_path(cache_dir, name, source)
    entry = cache.load(entry_path, name, source)
    if entry is None:
        parsed = PARSERS[name](source)
        entry = {
            "train_x": _tensor(parsed["train"][0], torch.uint8),
            "train_y": _tensor(parsed["train"][1], torch.int64),
            "test_x": _tensor(parsed["test"][0], torch.uint8),
            "test_y": _tensor(parsed["test"][1], torch.int64),
            "classes": list(parsed["classes"]), "files": parsed["files"],
        }
        cache.save(entry_path, name, source, entry)
    if name in FOLDER_ORDERED:
        entry = interleave(entry)
    mean, std = NORMALIZATION[name]
    if entry["train_x"].shape[1] != len(mean):
        # e.g. a grayscale image folder: no published statistics, so measure the train set
        mean, std = channel_stats(entry["train_x"])
    return Dataset(name=name, train_x=entry["train_x"], train_y=entry["train_y"],
                   test_x=entry["test_x"], test_y=entry["test_y"], classes=list(entry["classes"]),
                   mean=tuple(mean), std=tuple(std), source=os.path.realpath(source))
