"""Where each data set's official files live, with their published MD5 checksums.

One table so the URLs and checksums can be audited in one place. The base URL of every
entry can be replaced by a mirror (argument `mirror`, or the AAER_DATA_MIRROR environment
variable): the file is then fetched from `<mirror>/<filename>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aaer.errors import UsageError


@dataclass(frozen=True)
class Resource:
    filename: str
    url: str
    md5: str


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_TINY = "http://cs231n.stanford.edu/"

SOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        Resource("cifar-10-python.tar.gz", _TORONTO + "cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a"),
    ),
    "cifar100": (
        Resource("cifar-100-python.tar.gz", _TORONTO + "cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
    ),
    "svhn": (
        Resource("train_32x32.mat", _SVHN + "train_32x32.mat", "e26dedcc434d2e4ddac9fd7a3f3e0d7a"),
        Resource("test_32x32.mat", _SVHN + "test_32x32.mat", "eb5a983be6a315427106f1b3b4bf2ace"),
    ),
    "mnist": (
        Resource("train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
                 "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Resource("train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
                 "d53e105ee54ea40749a09fcbcd1e9432"),
        Resource("t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
                 "9fb629c4189551a2d022fa330f9573f3"),
        Resource("t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
                 "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion-mnist": (
        Resource("train-images-idx3-ubyte.gz", _FASHION + "train-images-idx3-ubyte.gz",
                 "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Resource("train-labels-idx1-ubyte.gz", _FASHION + "train-labels-idx1-ubyte.gz",
                 "25c81989df183df01b3e8a0aad5dffbe"),
        Resource("t10k-images-idx3-ubyte.gz", _FASHION + "t10k-images-idx3-ubyte.gz",
                 "bef4ecab320f06d8554ea6380940ec79"),
        Resource("t10k-labels-idx1-ubyte.gz", _FASHION + "t10k-labels-idx1-ubyte.gz",
                 "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "tinyimagenet": (
        Resource("tiny-imagenet-200.zip", _TINY + "tiny-imagenet-200.zip",
                 "90528d7ca1a48142e341f4ef8d21d0de"),
    ),
}


def resources_for(name: str, mirror: str | None = None) -> tuple[Resource, ...]:
    """The files to fetch for data set `name`, with URLs rewritten to `mirror` if given
    (or if AAER_DATA_MIRROR is set)."""
    if name not in SOURCES:
        raise UsageError(f"no download source for data set {name!r}; "
                         f"downloadable: {', '.join(sorted(SOURCES))}")
    mirror = mirror if mirror is not None else os.environ.get("AAER_DATA_MIRROR") or None
    if mirror is None:
        return SOURCES[name]
    base = mirror.rstrip("/") + "/"
    return tuple(Resource(r.filename, base + r.filename, r.md5) for r in SOURCES[name])
