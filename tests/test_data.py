"""Tests of aaer.data loading: each real release format, round-tripped through tiny files
written here (CIFAR pickles and their .tar.gz, SVHN .mat, IDX plain/.gz, image folders as
directory and zip, Tiny-ImageNet), the clear errors for missing/corrupt input, and the
decoded cache. The writers are in tests/helpers/files.py."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from aaer.data import DATASETS, augmentation_for, load_dataset
from aaer.data import cache as data_cache
from aaer.data import datasets as data_sets
from aaer.data import images as data_images
from tests.helpers.files import (idx_bytes, save_image, tar_folder, write_cifar10,
                                 write_cifar100, write_idx_set, zip_folder)


# ---------------------------------------------------------------- formats round-trip


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_cifar10_folder_and_parent_and_tar(tmp_path, rng):
    tx, ty, vx, vy, names = write_cifar10(str(tmp_path), rng)
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):
        d = load_dataset("cifar10", str(where), cache_dir=str(tmp_path / "c1"))
        assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
        assert torch.equal(d.train_x, torch.from_numpy(tx)) and d.train_x.shape == (20, 3, 32, 32)
        assert d.train_y.tolist() == ty.tolist() and d.test_y.tolist() == vy.tolist()
        assert torch.equal(d.test_x, torch.from_numpy(vx))
        assert d.classes == names and d.num_classes == 10
        assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2471, 0.2435, 0.2616)
        assert (d.in_channels, d.image_size) == (3, 32)
    # pixel layout: R plane first, row-major inside each plane
    assert d.train_x[0, 1, 2, 3].item() == tx.reshape(-1, 3072)[0, 1024 + 2 * 32 + 3]
    archive = tar_folder(str(tmp_path), "cifar-10-batches-py", str(tmp_path / "cifar-10-python.tar.gz"))
    for where in (archive,):
        d = load_dataset("cifar10", where, cache_dir=str(tmp_path / "c2"))
        assert torch.equal(d.train_x, torch.from_numpy(tx)) and d.test_y.tolist() == vy.tolist()
        assert d.source == os.path.realpath(archive)
    # a parent holding only the archive is found too
    only = tmp_path / "only"
    only.mkdir()
    os.replace(archive, only / "cifar-10-python.tar.gz")
    d = load_dataset("cifar-10", str(only), cache_dir=str(tmp_path / "c3"))
    assert d.name == "cifar10" and torch.equal(d.test_x, torch.from_numpy(vx))


def test_cifar100_fine_labels_folder_and_tar(tmp_path, rng):
    tx, ty, vx, vy, names = write_cifar100(str(tmp_path), rng)
    d = load_dataset("cifar100", str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert torch.equal(d.train_x, torch.from_numpy(tx)) and torch.equal(d.test_x, torch.from_numpy(vx))
    assert d.train_y.tolist() == ty.tolist() and d.test_y.tolist() == vy.tolist()
    assert d.classes == names and d.num_classes == 100
    assert d.mean == (0.50708, 0.48655, 0.44092) and d.std == (0.26733, 0.25644, 0.27615)
    archive = tar_folder(str(tmp_path), "cifar-100-python", str(tmp_path / "c100.tar.gz"))
    d = load_dataset("cifar100", archive, cache_dir=str(tmp_path / "c2"))
    assert torch.equal(d.train_x, torch.from_numpy(tx)) and d.train_y.tolist() == ty.tolist()


def test_svhn_mat_label_10_is_digit_0(tmp_path, rng):
    import scipy.io

    want = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # H x W x C x N
        y = np.array([10, 1, 9, 10, 3][:n], dtype=np.uint8).reshape(n, 1)
        scipy.io.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x, "y": y})
        want[split] = (x, y)
    d = load_dataset("svhn", str(tmp_path), cache_dir=str(tmp_path / "c"))
    x, y = want["train"]
    assert d.train_x.shape == (5, 3, 32, 32)
    assert d.train_y.tolist() == [0, 1, 9, 0, 3] and d.test_y.tolist() == [0, 1, 9]
    # example 2, channel 1, row 4, column 7 <- X[4, 7, 1, 2]
    assert d.train_x[2, 1, 4, 7].item() == x[4, 7, 1, 2]
    assert torch.equal(d.train_x, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    assert d.mean == (0.4380, 0.4440, 0.4730) and augmentation_for(d) == (4, True)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_plain_and_gz(tmp_path, rng, gz, name):
    data = write_idx_set(str(tmp_path), rng, gz=gz)
    d = load_dataset(name, str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert d.train_x.shape == (7, 1, 28, 28) and d.test_x.shape == (3, 1, 28, 28)
    assert torch.equal(d.train_x[:, 0], torch.from_numpy(data["train"][0]))
    assert d.train_y.tolist() == data["train"][1].tolist()
    assert d.test_y.tolist() == data["t10k"][1].tolist()
    assert augmentation_for(d) == (0, False)
    if name == "mnist":
        assert d.classes == [str(i) for i in range(10)] and d.mean == (0.1307,) and d.std == (0.3081,)
    else:
        assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
        assert d.mean == (0.2860,) and d.std == (0.3530,)


def _image_tree(root, rng, size=8, gray=False, ext=".png"):
    """root/{train,test}/<class>/ with known pixels; returns {split: [(array, label)]}."""
    classes = ["zebra", "ant", "mole"]  # sorted -> ant=0, mole=1, zebra=2
    out = {"train": [], "test": []}
    for split, per in (("train", 3), ("test", 2)):
        for c in classes:
            for i in range(per):
                shape = (size, size) if gray else (size, size, 3)
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                save_image(os.path.join(root, split, c, f"{i:03d}{ext}"), a)
                out[split].append((a, sorted(classes).index(c), c, i))
    for split in out:  # expected order: classes sorted, files sorted within a class
        out[split].sort(key=lambda t: (t[1], t[3]))
    return out


def folder_order(d):
    """Undo load_dataset's fixed interleaving of a folder data set: the on-disk order."""
    from aaer.data.datasets import ORDER_SEED
    out = {}
    for split in ("train", "test"):
        x, y = getattr(d, split + "_x"), getattr(d, split + "_y")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(ORDER_SEED))
        inv = torch.argsort(perm)
        out[split] = (x[inv], y[inv])
    import dataclasses
    return dataclasses.replace(d, train_x=out["train"][0], train_y=out["train"][1],
                               test_x=out["test"][0], test_y=out["test"][1])


def _chw(a):
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def test_image_folder_dir_and_zip_exact_pixels(tmp_path, rng):
    root = tmp_path / "flowers"
    want = _image_tree(str(root), rng)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored
    z = zip_folder(str(root), str(tmp_path / "flowers.zip"), arc_prefix="flowers/")
    z2 = zip_folder(str(root), str(tmp_path / "flat.zip"))
    for src in (str(root), z, z2):
        d = folder_order(load_dataset("imagefolder", src, cache_dir=str(tmp_path / "c")))
        assert d.classes == ["ant", "mole", "zebra"]
        assert d.train_x.shape == (9, 3, 8, 8) and d.test_x.shape == (6, 3, 8, 8)
        assert d.train_y.tolist() == [t[1] for t in want["train"]]
        for k, (a, *_rest) in enumerate(want["train"]):
            assert torch.equal(d.train_x[k], _chw(a))
        for k, (a, *_rest) in enumerate(want["test"]):
            assert torch.equal(d.test_x[k], _chw(a))
        assert d.mean == (0.485, 0.456, 0.406) and d.std == (0.229, 0.224, 0.225)
        assert augmentation_for(d) == (1, True)  # 8 // 8


def test_folder_data_sets_come_interleaved(tmp_path, rng):
    # on disk the images are grouped by class: "the first N" must not be one class
    root = tmp_path / "many"
    for c in ("a", "b", "c", "d"):
        for i in range(12):
            save_image(str(root / "train" / c / f"{i:02d}.png"),
                       rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            save_image(str(root / "test" / c / f"{i:02d}.png"),
                       rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    d = load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c"))
    assert len(set(d.train_y[:12].tolist())) >= 3 and len(set(d.test_y[:12].tolist())) >= 3
    assert sorted(d.train_y.tolist()) == [k for k in range(4) for _ in range(12)]
    again = load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c"))   # cached
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


def test_image_folder_val_split_jpeg_and_gray(tmp_path, rng):
    from PIL import Image

    root = tmp_path / "g"
    want = _image_tree(str(root), rng, size=16, gray=True)
    os.rename(root / "test", root / "val")
    d = folder_order(load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c")))
    assert d.train_x.shape == (9, 1, 16, 16) and d.test_x.shape == (6, 1, 16, 16)
    assert torch.equal(d.test_x[0], _chw(want["test"][0][0]))
    # no published statistics for one channel: measured on the train set
    x = d.train_x.double() / 255
    assert d.mean == (round(x.mean().item(), 4),) and d.std == (round(x.std(unbiased=False).item(), 4),)
    # one colour JPEG among gray PNGs -> all RGB, gray ones replicated into 3 channels
    jpg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save_image(str(root / "train" / "ant" / "zzz.jpg"), jpg)
    d = folder_order(load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c")))
    assert d.train_x.shape == (10, 3, 16, 16)
    g = _chw(want["train"][0][0])
    assert torch.equal(d.train_x[0], g.expand(3, 16, 16))
    decoded = np.asarray(Image.open(root / "train" / "ant" / "zzz.jpg").convert("RGB"))
    assert torch.equal(d.train_x[3], _chw(decoded))  # ant: 000, 001, 002, zzz


def test_image_folder_parallel_decode_matches_serial(tmp_path, rng, monkeypatch):
    root = tmp_path / "p"
    _image_tree(str(root), rng)
    from PIL import Image

    monkeypatch.setattr(data_images, "PARALLEL_MIN", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    pools = []
    real_context = data_images.mp.get_context

    def spy(method):
        pools.append(method)
        return real_context(method)

    monkeypatch.setattr(data_images.mp, "get_context", spy)
    tree = data_images._Tree(str(root))
    rels = sorted(f for f in tree.files if f.endswith(".png"))
    x = data_images._decode(tree, rels * 60, gray_ok=True)  # 900 images, 2 worker processes
    assert pools == ["fork"]
    serial = np.stack([np.asarray(Image.open(root / r)) for r in rels])
    assert x.shape == (900, 3, 8, 8)
    assert np.array_equal(x[:15], serial.transpose(0, 3, 1, 2))
    assert np.array_equal(x[-15:], serial.transpose(0, 3, 1, 2))


def _tiny_imagenet(root, rng):
    from PIL import Image

    wnids = ["n0300", "n0100", "n0200"]  # file order is not sorted; classes are
    (root / "train").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            mode = "L" if (w, i) == ("n0200", 1) else "RGB"
            shape = (64, 64) if mode == "L" else (64, 64, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
    lines = []
    for i, w in enumerate(["n0200", "n0300", "n0100", "n0200"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tinyimagenet_dir_and_zip(tmp_path, rng):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    _tiny_imagenet(root, rng)
    z = zip_folder(str(root), str(tmp_path / "tiny-imagenet-200.zip"), arc_prefix="tiny-imagenet-200/")
    for src in (str(tmp_path), str(root), z):
        d = folder_order(load_dataset("tinyimagenet", src, cache_dir=str(tmp_path / "c")))
        assert d.classes == ["n0100", "n0200", "n0300"]
        assert d.train_x.shape == (6, 3, 64, 64) and d.test_x.shape == (4, 3, 64, 64)
        assert d.train_y.tolist() == [0, 0, 1, 1, 2, 2] and d.test_y.tolist() == [1, 2, 0, 1]
        gray = np.asarray(Image.open(root / "train" / "n0200" / "images" / "n0200_1.JPEG"))
        assert gray.ndim == 2 and torch.equal(d.train_x[3], torch.from_numpy(gray.copy()).expand(3, 64, 64))
        v2 = np.asarray(Image.open(root / "val" / "images" / "val_2.JPEG").convert("RGB"))
        assert torch.equal(d.test_x[2], _chw(v2))
        assert d.mean == (0.50708, 0.48655, 0.44092) and augmentation_for(d) == (8, True)


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        load_dataset("cifar11", "/nonexistent")
    for n in DATASETS:
        assert n in str(e.value)


@pytest.mark.parametrize("name,expect", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
    ("svhn", "train_32x32.mat"), ("mnist", "train-images-idx3-ubyte"),
    ("tinyimagenet", "wnids.txt"), ("imagefolder", "train/<class>"),
])
def test_missing_data_names_path_and_expected_files(tmp_path, name, expect):
    where = str(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, where, cache_dir=str(tmp_path / "c"))
    assert where in str(e.value) and expect in str(e.value)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sets, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", cache_dir=str(tmp_path / "c"))
    msg = str(e.value)
    assert str(tmp_path / "absent") in msg and "apt-get install -y dataset-fashion-mnist" in msg
    assert "download=True" in msg


def test_missing_cifar_batch_named(tmp_path, rng):
    write_cifar10(str(tmp_path), rng)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_corrupt_files_give_value_errors_naming_the_file(tmp_path, rng):
    write_cifar10(str(tmp_path), rng)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])  # truncated pickle
    with pytest.raises(ValueError, match="data_batch_2.*truncated or corrupt"):
        load_dataset("cifar10", str(tmp_path), cache_dir=str(tmp_path / "c"))
    # a pickle that would run code is refused, not executed
    batch.write_bytes(pickle.dumps({"data": os.system}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", str(tmp_path), cache_dir=str(tmp_path / "c"))

    idx = tmp_path / "idx"
    write_idx_set(str(idx), rng, gz=False)
    img = idx / "train-images-idx3-ubyte"
    raw = img.read_bytes()
    img.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*shape \(7, 28, 28\)"):
        load_dataset("mnist", str(idx), cache_dir=str(tmp_path / "c"))
    img.write_bytes(b"\x12\x34\x56\x78" + raw[4:])
    with pytest.raises(ValueError, match="bad magic number 12345678"):
        load_dataset("mnist", str(idx), cache_dir=str(tmp_path / "c"))
    img.write_bytes(raw)
    (idx / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        load_dataset("mnist", str(idx), cache_dir=str(tmp_path / "c"))

    gz = tmp_path / "gz"
    write_idx_set(str(gz), rng, gz=True)
    g = gz / "t10k-images-idx3-ubyte.gz"
    g.write_bytes(g.read_bytes()[:40])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", str(gz), cache_dir=str(tmp_path / "c"))

    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ValueError, match="bad.zip is not a readable zip"):
        load_dataset("imagefolder", str(bad_zip), cache_dir=str(tmp_path / "c"))

    bad_tar = tmp_path / "cifar-10-python.tar.gz"
    bad_tar.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz is not a readable tar"):
        load_dataset("cifar10", str(bad_tar), cache_dir=str(tmp_path / "c"))


def test_image_folder_bad_image_and_mixed_sizes(tmp_path, rng):
    root = tmp_path / "f"
    _image_tree(str(root), rng)
    (root / "test" / "mole" / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"test.mole.001\.png is not a readable image"):
        load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c"))
    save_image(str(root / "test" / "mole" / "001.png"), np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"001\.png is 8x9 .* one size"):
        load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c"))
    save_image(str(root / "test" / "mole" / "001.png"), np.zeros((8, 8, 3), np.uint8))
    save_image(str(root / "test" / "yak" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="class 'yak' does not exist in train/"):
        load_dataset("imagefolder", str(root), cache_dir=str(tmp_path / "c"))


def test_imagefolder_requires_a_path_and_has_no_download(tmp_path):
    with pytest.raises(ValueError, match="imagefolder needs data_dir"):
        load_dataset("imagefolder")
    with pytest.raises(ValueError, match="download=True is not available for imagefolder"):
        load_dataset("imagefolder", str(tmp_path), download=True)


# ---------------------------------------------------------------- decoded cache


def _counting_parser(monkeypatch, name):
    calls = []
    real = data_sets.PARSERS[name]

    def parse(src):
        calls.append(src)
        return real(src)

    monkeypatch.setitem(data_sets.PARSERS, name, parse)
    return calls


def test_cache_reused_then_rebuilt_when_a_source_changes(tmp_path, rng, monkeypatch):
    write_idx_set(str(tmp_path / "m"), rng)
    calls = _counting_parser(monkeypatch, "mnist")
    d1 = load_dataset("mnist", str(tmp_path / "m"))  # default cache: <data_dir>/.aaer_cache
    d2 = load_dataset("mnist", str(tmp_path / "m"))
    assert len(calls) == 1
    assert torch.equal(d1.train_x, d2.train_x) and d1.classes == d2.classes
    entries = os.listdir(tmp_path / "m" / ".aaer_cache")
    assert len(entries) == 1 and entries[0].startswith("mnist-") and entries[0].endswith(".pt")
    # new content -> rebuilt, and the new pixels are what comes back
    new = write_idx_set(str(tmp_path / "m"), np.random.default_rng(5))
    d3 = load_dataset("mnist", str(tmp_path / "m"))
    assert len(calls) == 2
    assert torch.equal(d3.train_x[:, 0], torch.from_numpy(new["train"][0]))
    assert not torch.equal(d3.train_x, d1.train_x)
    # same size, only the mtime moves -> rebuilt too
    f = tmp_path / "m" / "t10k-labels-idx1-ubyte.gz"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_dataset("mnist", str(tmp_path / "m"))
    assert len(calls) == 3
    load_dataset("mnist", str(tmp_path / "m"))
    assert len(calls) == 3
    assert os.listdir(tmp_path / "m" / ".aaer_cache") == entries  # replaced in place, no temp left


def test_cache_keyed_by_source_and_survives_corruption(tmp_path, rng, monkeypatch):
    write_idx_set(str(tmp_path / "a"), rng)
    write_idx_set(str(tmp_path / "b"), np.random.default_rng(1))
    calls = _counting_parser(monkeypatch, "mnist")
    c = str(tmp_path / "shared-cache")
    a = load_dataset("mnist", str(tmp_path / "a"), cache_dir=c)
    b = load_dataset("mnist", str(tmp_path / "b"), cache_dir=c)
    assert len(calls) == 2 and not torch.equal(a.train_x, b.train_x)
    assert torch.equal(load_dataset("mnist", str(tmp_path / "a"), cache_dir=c).train_x, a.train_x)
    assert len(calls) == 2
    for entry in os.listdir(c):
        with open(os.path.join(c, entry), "r+b") as f:
            f.write(b"garbage")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        again = load_dataset("mnist", str(tmp_path / "a"), cache_dir=c)
    assert len(calls) == 3 and torch.equal(again.train_x, a.train_x)


def test_image_folder_cache_sees_added_files(tmp_path, rng, monkeypatch):
    root = tmp_path / "f"
    _image_tree(str(root), rng)
    calls = _counting_parser(monkeypatch, "imagefolder")
    assert len(load_dataset("imagefolder", str(root)).train_y) == 9
    assert len(load_dataset("imagefolder", str(root)).train_y) == 9
    assert len(calls) == 1 and (root / ".aaer_cache").is_dir()
    save_image(str(root / "train" / "mole" / "new.png"), np.zeros((8, 8, 3), np.uint8))
    assert len(load_dataset("imagefolder", str(root)).train_y) == 10
    assert len(calls) == 2


def test_default_cache_dir_for_read_only_data(tmp_path, rng, monkeypatch):
    ro = tmp_path / "ro"
    write_idx_set(str(ro), rng)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    os.chmod(ro, 0o555)
    try:
        assert data_cache.default_cache_dir(str(ro)) == str(tmp_path / "home-cache" / "aaer")
        load_dataset("mnist", str(ro))
        assert not (ro / ".aaer_cache").exists()
        assert len(os.listdir(tmp_path / "home-cache" / "aaer")) == 1
    finally:
        os.chmod(ro, 0o755)
    assert data_cache.default_cache_dir(str(ro)) == str(ro / ".aaer_cache")
    assert data_cache.default_cache_dir("/usr/share/datasets/x") == str(tmp_path / "home-cache" / "aaer")
