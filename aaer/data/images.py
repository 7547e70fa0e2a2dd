"""Decoders for data sets stored as image files: an image-folder tree
(`root/{train,test|val}/<class>/*.{jpg,jpeg,png}`) and Tiny-ImageNet-200, each read either
from a directory or straight from a .zip archive (optionally wrapped in one top folder).

Images are decoded with pillow: to RGB, except that an image folder whose images are all
8-bit grayscale keeps one channel. All images of a data set must share one size.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import zipfile

import numpy as np

from aaer.errors import MissingFile, UsageError, require

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _hidden(folder: str) -> bool:
    return folder.startswith(".") or folder == "__MACOSX"


class _Tree:
    """Read-only view of the files under a directory or inside a zip, by relative posix path."""

    def __init__(self, path: str, listing: bool = True):
        self.path = path
        self.zip = None
        if os.path.isdir(path):
            if not listing:
                return
            self.files = set()
            self.dirs = set()
            for here, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not _hidden(d)]  # e.g. our .aaer_cache
                rel = os.path.relpath(here, path).replace(os.sep, "/")
                rel = "" if rel == "." else rel + "/"
                self.dirs.update(rel + d for d in dirnames)
                self.files.update(rel + f for f in filenames)
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise UsageError(f"{path} is not a readable zip archive: {e}") from e
            if not listing:
                return
            names = [n for n in self.zip.namelist() if not any(map(_hidden, n.split("/")[:-1]))]
            self.files = {n for n in names if not n.endswith("/")}
            self.dirs = {n.rstrip("/") for n in names if n.endswith("/")}
            # zips need not list directories: infer them from the files' parent folders
            for parent in {f.rpartition("/")[0] for f in self.files} - {""}:
                parts = parent.split("/")
                self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))

    def where(self, rel: str) -> str:
        return f"{self.path}:{rel}" if self.zip is not None else os.path.join(self.path, rel)

    def read(self, rel: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(rel)
        with open(os.path.join(self.path, rel), "rb") as f:
            return f.read()

    def file_names(self, folder: str) -> list[str]:
        """Names of the files directly inside `folder`."""
        if not hasattr(self, "_by_folder"):
            self._by_folder = {}
            for f in self.files:
                parent, _, name = f.rpartition("/")
                self._by_folder.setdefault(parent, []).append(name)
        return self._by_folder.get(folder, [])

    def children(self, folder: str) -> list[str]:
        """Names of the sub-directories directly inside `folder` (relative path, '' = top)."""
        prefix = folder + "/" if folder else ""
        return sorted(d[len(prefix):] for d in self.dirs
                      if d.startswith(prefix) and "/" not in d[len(prefix):] and d != folder)

    def source_files(self, used: list[str]) -> list[str]:
        """What the decoded cache must watch: the zip itself, or every file and folder used."""
        if self.zip is not None:
            return [self.path]
        folders = set()
        for u in used:  # every ancestor folder: adding or removing a file or class changes one
            parts = u.split("/")[:-1]
            folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(os.path.join(self.path, d) for d in folders) + \
            [os.path.join(self.path, u) for u in used]

    def close(self):
        if self.zip is not None:
            self.zip.close()


def _find_root(tree: _Tree, marker: str) -> str | None:
    """'' if `marker` is at the top of the tree, else the single top folder that holds it."""
    if marker in tree.dirs or marker in tree.files:
        return ""
    tops = tree.children("")
    if len(tops) == 1 and f"{tops[0]}/{marker}" in (tree.dirs | tree.files):
        return tops[0] + "/"
    return None


def _decode_one(tree: _Tree, rel: str, gray_ok: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(tree.read(rel))) as img:
            if gray_ok and img.mode in ("L", "1"):
                return np.asarray(img.convert("L") if img.mode == "1" else img)
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{tree.where(rel)} is not a readable image: {e}") from e


# Decoding is mostly Python-level work inside pillow, so threads do not help; large sets are
# split over forked worker processes, each with its own handle on the zip or folder.
PARALLEL_MIN = 4096
_worker_tree = None


def _worker_init(path: str) -> None:
    global _worker_tree
    _worker_tree = _Tree(path, listing=False)


def _worker_decode(task: tuple[list[str], bool]):
    rels, gray_ok = task
    arrays = [_decode_one(_worker_tree, r, gray_ok) for r in rels]
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)  # one buffer through the pipe instead of thousands of objects
    return arrays


def _decode_all(tree: _Tree, rels: list[str], gray_ok: bool) -> list[np.ndarray]:
    require("PIL", "pillow", None, "decoding image folders")   # here, not in a worker
    workers = min(os.cpu_count() or 1, 16, len(rels) // 256)
    if len(rels) < PARALLEL_MIN or workers < 2 or "fork" not in mp.get_all_start_methods():
        return [_decode_one(tree, r, gray_ok) for r in rels]
    step = math.ceil(len(rels) / (4 * workers))
    tasks = [(rels[i:i + step], gray_ok) for i in range(0, len(rels), step)]
    with mp.get_context("fork").Pool(workers, _worker_init, (tree.path,)) as pool:
        return [a for chunk in pool.map(_worker_decode, tasks) for a in chunk]


def _decode(tree: _Tree, rels: list[str], gray_ok: bool) -> np.ndarray:
    """Decode images to uint8 [N, C, H, W]: RGB, or 1 channel if gray_ok and all are grayscale."""
    if not rels:
        return np.zeros((0, 3, 0, 0), np.uint8)
    arrays = _decode_all(tree, rels, gray_ok)
    size = arrays[0].shape[:2]
    for rel, a in zip(rels, arrays):
        if a.shape[:2] != size:
            raise UsageError(f"{tree.where(rel)} is {a.shape[1]}x{a.shape[0]} but "
                             f"{tree.where(rels[0])} is {size[1]}x{size[0]}: all images of a data "
                             f"set must have one size (resize them first)")
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None]
    # pillow's L -> RGB conversion copies the gray value into all three channels
    arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def _images_in(tree: _Tree, folder: str) -> list[str]:
    return sorted(f"{folder}/{name}" for name in tree.file_names(folder)
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTS))


def read_image_folder(path: str) -> dict:
    """`path/{train,test|val}/<class>/<image>` (directory or .zip); classes sorted by name."""
    if not os.path.exists(path):
        raise MissingFile(f"image folder {path} does not exist: expected a directory or a "
                          f".zip holding train/<class>/*.jpg|png and test/<class>/ (or val/)")
    tree = _Tree(path)
    try:
        top = _find_root(tree, "train")
        test_name = "test" if top is not None and top + "test" in tree.dirs else "val"
        if top is None or top + test_name not in tree.dirs:
            raise MissingFile(
                f"{path} is not an image folder: expected train/<class>/*.jpg|png and "
                f"test/<class>/ (or val/) at its top or inside one top folder; "
                f"found {', '.join(tree.children('')[:10]) or 'nothing'}")
        classes = tree.children(top + "train")
        if not classes:
            raise MissingFile(f"{tree.where(top + 'train')} has no class folders")
        index = {c: i for i, c in enumerate(classes)}
        split, used = {}, []
        for part, folder in (("train", "train"), ("test", test_name)):
            rels, labels = [], []
            for c in tree.children(top + folder):
                if c not in index:
                    raise UsageError(f"{tree.where(top + folder + '/' + c)}: class {c!r} does not "
                                     f"exist in train/ (classes: {', '.join(classes)})")
                found = _images_in(tree, f"{top}{folder}/{c}")
                if not found:
                    raise UsageError(f"{tree.where(top + folder + '/' + c)} holds no "
                                     f"{'/'.join(IMAGE_EXTS)} images")
                rels += found
                labels += [index[c]] * len(found)
            split[part] = (rels, np.asarray(labels, dtype=np.int64))
            used += rels
        # decide grayscale over the whole data set so train and test agree on channels
        x_all = _decode(tree, split["train"][0] + split["test"][0], gray_ok=True)
        n = len(split["train"][0])
        return {"train": (x_all[:n], split["train"][1]), "test": (x_all[n:], split["test"][1]),
                "classes": classes, "files": tree.source_files(used)}
    finally:
        tree.close()


def locate_tinyimagenet(root: str) -> str:
    if os.path.isfile(root):
        return root
    for candidate in (root, os.path.join(root, "tiny-imagenet-200"),
                      os.path.join(root, "tiny-imagenet-200.zip")):
        if os.path.isfile(os.path.join(candidate, "wnids.txt")) or os.path.isfile(candidate):
            return candidate
    raise MissingFile(
        f"tinyimagenet not found in {root}: expected tiny-imagenet-200/ (wnids.txt, "
        f"train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt) or "
        f"tiny-imagenet-200.zip; pass download=True (CLI: --download)")


def read_tinyimagenet(path: str) -> dict:
    tree = _Tree(path)
    try:
        top = _find_root(tree, "wnids.txt")
        if top is None:
            raise MissingFile(f"{path} is not Tiny-ImageNet-200: wnids.txt not found")
        for need in ("val/val_annotations.txt", "train", "val/images"):
            if top + need not in tree.files | tree.dirs:
                raise MissingFile(f"{tree.where(top + need)} is missing (Tiny-ImageNet-200 "
                                  f"has wnids.txt, train/<wnid>/images/, val/images/ and "
                                  f"val/val_annotations.txt)")
        wnids = tree.read(top + "wnids.txt").decode().split()
        classes = sorted(wnids)
        index = {w: i for i, w in enumerate(classes)}
        train_rels, train_y = [], []
        for w in classes:
            found = _images_in(tree, f"{top}train/{w}/images")
            if not found:
                raise MissingFile(f"{tree.where(f'{top}train/{w}/images')} holds no images")
            train_rels += found
            train_y += [index[w]] * len(found)
        test_rels, test_y = [], []
        annotations = tree.read(top + "val/val_annotations.txt").decode()
        for lineno, line in enumerate(annotations.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise UsageError(f"{tree.where(top + 'val/val_annotations.txt')} line {lineno}: "
                                 f"expected '<file>\\t<wnid>...' with a wnid from wnids.txt, "
                                 f"got {line!r}")
            rel = f"{top}val/images/{fields[0]}"
            if rel not in tree.files:
                raise MissingFile(f"{tree.where(rel)} is listed in val_annotations.txt "
                                  f"but missing")
            test_rels.append(rel)
            test_y.append(index[fields[1]])
        x_all = _decode(tree, train_rels + test_rels, gray_ok=False)
        n = len(train_rels)
        used = [top + "wnids.txt", top + "val/val_annotations.txt"] + train_rels + test_rels
        return {"train": (x_all[:n], np.asarray(train_y, dtype=np.int64)),
                "test": (x_all[n:], np.asarray(test_y, dtype=np.int64)),
                "classes": classes, "files": tree.source_files(used)}
    finally:
        tree.close()
