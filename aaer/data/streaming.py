"""Image sets too large to decode into memory, streamed from their files: ImageNet-100 as
the official AAER code reads it, and any image folder whose images differ in size.

ImageNet-100 (SPEC §9): ``<root>/Imagenet-100/{wnids.txt, train/<wnid>/*, val/<wnid>/*}``
(or that folder itself, or a .zip / uncompressed .tar of it); the classes are the sorted
wnids of wnids.txt. An image folder: ``train/<class>/*`` and ``test|val/<class>/*``.

Training images are decoded and augmented in worker processes, batch by batch, never all
at once: RandomResizedCrop(size) with PyTorch's semantics (scale (0.08, 1), ratio (3/4,
4/3), 10 tries, then a center crop of the allowed ratio), bilinear, and a horizontal flip
with probability 1/2. Every random choice of an image is drawn from a generator seeded by
(seed, epoch, its place in the epoch), and the epoch's order by (seed, epoch), so a batch
is the same whichever worker decodes it and whenever: an epoch interrupted after k batches
and resumed continues with exactly batch k. Test images get Resize(size * 8/7) of the
shorter side + CenterCrop(size) (256 / 224 at size 224) and are decoded once. Pillow
decodes: it is a dependency already, is what torchvision's ImageNet pipelines use, and
releases nothing to gain from threads, so the work is split over processes.
"""
from __future__ import annotations

import hashlib
import io
import math
import multiprocessing as mp
import os
import tarfile
import time
import zipfile

import numpy as np
import torch

from aaer.data.loader import LoaderPosition, _epoch_seed
from aaer.errors import MissingFile, UsageError, require

EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
_U8_TO_UNIT = torch.arange(256, dtype=torch.float32).div_(255)


# -- where the files are: a directory, a zip, an uncompressed tar ---------------------------

class Store:
    """Read-only access to the files of a directory, .zip or uncompressed .tar by relative
    posix path. ``names``: every file; workers reopen it with ``Store(path, listing=False)``
    and the tar's offsets."""

    def __init__(self, path: str, listing: bool = True, offsets: dict | None = None):
        self.path = path
        self.kind = "dir" if os.path.isdir(path) else \
            "zip" if zipfile.is_zipfile(path) else "tar"
        self._zip = self._file = None
        self.offsets = offsets or {}
        if self.kind == "zip":
            self._zip = zipfile.ZipFile(path)
            if listing:
                self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
        elif self.kind == "tar":
            if path.endswith((".gz", ".tgz", ".bz2", ".xz")):
                raise UsageError(f"{path} is a compressed tar, which has no random access to "
                                 "its images; valid: a directory, a .zip or an uncompressed "
                                 ".tar (unpack it, or tar it without compression)")
            if listing:
                try:
                    with tarfile.open(path, "r:") as t:
                        members = [m for m in t.getmembers() if m.isfile()]
                except (tarfile.TarError, OSError) as e:
                    raise UsageError(f"{path} is not a readable directory, .zip or .tar: "
                                     f"{e}") from None
                self.offsets = {m.name.lstrip("./"): (m.offset_data, m.size) for m in members}
                self.names = list(self.offsets)
            self._file = open(path, "rb")
        elif listing:
            self.names = []
            for here, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(here, path).replace(os.sep, "/")
                self.names += [f if rel == "." else f"{rel}/{f}" for f in files]

    def where(self, rel: str) -> str:
        return os.path.join(self.path, rel) if self.kind == "dir" else f"{self.path}:{rel}"

    def read(self, rel: str) -> bytes:
        if self.kind == "zip":
            return self._zip.read(rel)
        if self.kind == "tar":
            offset, size = self.offsets[rel]
            self._file.seek(offset)
            return self._file.read(size)
        with open(os.path.join(self.path, rel), "rb") as f:
            return f.read()

    def size(self, rel: str) -> int:
        if self.kind == "zip":
            return self._zip.getinfo(rel).file_size
        if self.kind == "tar":
            return self.offsets[rel][1]
        return os.path.getsize(os.path.join(self.path, rel))

    def close(self) -> None:
        for h in (self._zip, self._file):
            if h is not None:
                h.close()


# -- the transforms ----------------------------------------------------------------------

def crop_params(width: int, height: int, rng: np.random.Generator):
    """RandomResizedCrop's box (top, left, h, w) with torchvision's semantics."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height               # fallback: the center crop of an allowed ratio
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_size(size: int) -> int:
    """The shorter side the test images are resized to: 256 for a 224 crop."""
    return int(round(size * 256 / 224))


def _rgb(store: Store, rel: str):
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(io.BytesIO(store.read(rel)))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{store.where(rel)} is not a readable image: {e}") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def train_image(store: Store, rel: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(size) + horizontal flip (p 1/2): uint8 [3, size, size]."""
    from PIL import Image
    img = _rgb(store, rel)
    top, left, h, w = crop_params(img.width, img.height, rng)
    out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out).transpose(2, 0, 1)


def eval_image(store: Store, rel: str, size: int) -> np.ndarray:
    """Resize(shorter side to eval_size(size)) + CenterCrop(size): uint8 [3, size, size]."""
    from PIL import Image
    img = _rgb(store, rel)
    s = eval_size(size)
    w, h = img.size
    ow, oh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize((ow, oh), Image.BILINEAR)
    top, left = int(round((oh - size) / 2.0)), int(round((ow - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def image_rng(seed: int, epoch: int, place: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(place)])


# -- worker processes --------------------------------------------------------------------

_store: Store | None = None


def _init(path: str, offsets: dict) -> None:
    global _store
    _store = Store(path, listing=False, offsets=offsets)


def _train_batch(task):
    rels, places, seed, epoch, size = task
    return np.stack([train_image(_store, r, size, image_rng(seed, epoch, p))
                     for r, p in zip(rels, places)])


def _test_batch(task):
    rels, size = task
    return np.stack([eval_image(_store, r, size) for r in rels])


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Workers:
    """A pool of decoding processes (spawned: safe beside CUDA and torch's threads), or the
    calling process itself when ``workers`` is 0."""

    def __init__(self, store: Store, workers: int):
        self.store, self.workers = store, workers
        self.pool = None
        if workers > 0:
            ctx = mp.get_context("spawn")
            self.pool = ctx.Pool(workers, _init, (store.path, store.offsets))

    def submit(self, fn, task):
        if self.pool is None:
            global _store
            _store = self.store
            return _Done(fn(task))
        return self.pool.apply_async(fn, (task,))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class _Done:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


# -- the images of a split -----------------------------------------------------------------

class FileImages:
    """The images of a training split, not decoded: what ``Dataset.train_x`` holds for a
    streamed data set. Slicing takes a subset (``[:n]``); ``shape`` is that of the crops."""

    def __init__(self, store: Store, rels: list[str], size: int, workers: int):
        self.store, self.rels, self.size, self.workers = store, list(rels), size, workers

    def __len__(self) -> int:
        return len(self.rels)

    @property
    def shape(self) -> tuple:
        return (len(self.rels), 3, self.size, self.size)

    @property
    def dtype(self):
        return torch.uint8

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("FileImages takes slices (x[:n], x[a:b])")
        return FileImages(self.store, self.rels[key], self.size, self.workers)

    def fingerprint(self) -> str:
        """sha256 over the file names and sizes (what a resumed run must train on)."""
        h = hashlib.sha256(repr((self.size, os.path.basename(self.store.path))).encode())
        for r in self.rels:
            h.update(f"{r}\0{self.store.size(r)}\n".encode())
        return h.hexdigest()

    def materialize(self, batch: int = 64) -> torch.Tensor:
        """Every image with the test transform, decoded: uint8 [N, 3, size, size]."""
        return decode_test(self.store, self.rels, self.size, self.workers, batch)


def decode_test(store: Store, rels: list[str], size: int, workers: int,
                batch: int = 64) -> torch.Tensor:
    if not rels:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    pool = Workers(store, min(workers, math.ceil(len(rels) / batch)))
    try:
        jobs = [pool.submit(_test_batch, (rels[i:i + batch], size))
                for i in range(0, len(rels), batch)]
        return torch.from_numpy(np.concatenate([j.get() for j in jobs]))
    finally:
        pool.close()


# -- the training loader -------------------------------------------------------------------

class StreamingLoader(LoaderPosition):
    """Batches of a FileImages split, decoded and augmented by worker processes.

    The same interface and state as aaer.data.BatchLoader (len, set_epoch, position,
    state_dict / load_state_dict, rank / world_size sharing of one global order), so the
    trainer's exact resume holds. ``prefetch`` batches are decoded ahead of the one in use.
    ``wait_seconds``: time the last epoch's iteration spent waiting for a batch.
    """

    on_device = False

    def __init__(self, x: FileImages, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 device="cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int | None = None, prefetch: int | None = None):
        if len(y) != len(x) or len(y) == 0:
            raise ValueError(f"need one label per image and at least one image, got "
                             f"{len(x)} images and {len(y)} labels")
        require("PIL", "pillow", None, "decoding image folders")
        self.x, self.y = x, y.long().cpu()
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.num_examples = len(y)
        self.share = math.ceil(self.num_examples / self.world_size)
        self.workers = x.workers if workers is None else workers
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self.epoch, self.position, self._resume_epoch = 0, 0, None
        self.wait_seconds = 0.0
        self._pool: Workers | None = None
        self._lut = None

    def __len__(self) -> int:
        return math.ceil(self.share / self.batch_size)

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        n, total = self.num_examples, self.share * self.world_size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        return order

    def _task(self, order: torch.Tensor, k: int):
        # this rank's k-th batch; its images' places in the global order seed their draws
        places = list(range(self.rank + self.world_size * k * self.batch_size,
                            min(self.share * self.world_size,
                                self.rank + self.world_size * (k + 1) * self.batch_size),
                            self.world_size))
        idx = order[places]
        rels = [self.x.rels[int(i)] for i in idx]
        return (rels, places, self.seed, self.epoch, self.x.size), idx

    def __iter__(self):
        for xb, yb, _ in self.indexed():
            yield xb, yb

    def indexed(self):
        """Iterate (x, y, index), as aaer.data.BatchLoader.indexed."""
        if self._pool is None:
            self._pool = Workers(self.x.store, self.workers)
        order = self._order()
        pending = []
        k_next = self.position
        self.wait_seconds = 0.0
        while self.position < len(self):
            while k_next < len(self) and len(pending) < self.prefetch:
                task, idx = self._task(order, k_next)
                pending.append((self._pool.submit(_train_batch, task), idx))
                k_next += 1
            job, idx = pending.pop(0)
            t0 = time.perf_counter()
            arr = job.get()
            self.wait_seconds += time.perf_counter() - t0
            xb = torch.from_numpy(arr)
            if self._lut is None:
                self._lut = _U8_TO_UNIT.to(self.device)
            xb = self._lut[xb.to(self.device, non_blocking=True).long()]
            yb = self.y[idx].to(self.device, non_blocking=True)
            self.position += 1
            yield xb, yb, idx.to(self.device, non_blocking=True)
        self.epoch += 1
        self.position = 0
        self._resume_epoch = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# -- the data sets -------------------------------------------------------------------------

def _top(names: set[str], marker: str) -> str | None:
    """'' if marker is at the top, else the folder path prefix (up to two levels) holding it."""
    if marker in names or any(n.startswith(marker + "/") for n in names):
        return ""
    tops = sorted({n.split("/")[0] for n in names})
    for t in tops:
        for sub in ("", "Imagenet-100/"):
            p = f"{t}/{sub}"
            if p + marker in names or any(n.startswith(p + marker + "/") for n in names):
                return p
    return None


def _by_class(names: list[str], folder: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        if not n.startswith(folder + "/"):
            continue
        parts = n[len(folder) + 1:].split("/")
        if len(parts) == 2 and not parts[1].startswith(".") and \
                parts[1].lower().endswith(EXTS):
            out.setdefault(parts[0], []).append(n)
    return {c: sorted(v) for c, v in out.items()}


def locate_imagenet100(root: str) -> str:
    for candidate in (os.path.join(root, "Imagenet-100"), root,
                      os.path.join(root, "Imagenet-100.zip"), os.path.join(root, "Imagenet-100.tar")):
        if os.path.isdir(candidate) and os.path.isfile(os.path.join(candidate, "wnids.txt")):
            return candidate
        if os.path.isfile(candidate):
            return candidate
    raise MissingFile(f"{os.path.join(root, 'Imagenet-100', 'wnids.txt')} does not exist: "
                      "expected <root>/Imagenet-100/{wnids.txt, train/<wnid>/*, "
                      "val/<wnid>/*}, or that folder as a .zip or .tar")


def scan(source: str, layout: str):
    """(store, classes, {split: (rels, labels)}) of an ImageNet-100 tree or an image folder."""
    if not os.path.exists(source):
        raise MissingFile(f"{source} does not exist")
    store = Store(source)
    names = set(store.names)
    marker = "wnids.txt" if layout == "imagenet100" else "train"
    top = _top(names, marker)
    if top is None:
        what = "wnids.txt" if layout == "imagenet100" else "train/<class>/"
        raise MissingFile(f"{store.where(what)} does not exist: expected "
                          + ("Imagenet-100/{wnids.txt, train/<wnid>/*, val/<wnid>/*}"
                             if layout == "imagenet100" else
                             "train/<class>/* and test/<class>/* (or val/)"))
    splits = {}
    if layout == "imagenet100":
        text = store.read(top + "wnids.txt").decode("utf-8", "replace")
        wnids = [w.strip() for w in text.splitlines() if w.strip()]
        if not wnids:
            raise UsageError(f"{store.where(top + 'wnids.txt')} lists no wnid")
        classes = sorted(wnids)
        test_folder = "val"
    else:
        classes = sorted(_by_class(sorted(names), top + "train"))
        test_folder = "test" if any(n.startswith(top + "test/") for n in names) else "val"
    index = {c: i for i, c in enumerate(classes)}
    for split, folder in (("train", "train"), ("test", test_folder)):
        found = _by_class(sorted(names), top + folder)
        extra = sorted(set(found) - set(index))
        if extra:
            raise UsageError(f"{store.where(top + folder + '/' + extra[0])}: class "
                             f"{extra[0]!r} is not among the classes "
                             f"({'wnids.txt' if layout == 'imagenet100' else 'train/'})")
        missing = [c for c in classes if not found.get(c)]
        if missing:
            raise UsageError(f"{store.where(top + folder + '/' + missing[0])} holds no "
                             f"{'/'.join(EXTS)} image (class {missing[0]!r})")
        rels = [r for c in classes for r in found[c]]
        labels = [index[c] for c in classes for _ in found[c]]
        splits[split] = (rels, torch.tensor(labels, dtype=torch.long))
    return store, classes, splits
