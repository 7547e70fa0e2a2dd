"""Streamed data sets (aaer.data.streaming): ImageNet-100's official layout and image
folders of mixed sizes, on JPEG trees the tests write.

Class order and labels, the random-resized crop's output and its scale/ratio bounds over
many draws, the test transform against a hand-computed resize + crop, determinism for a
seed (also across worker counts and processes), resume mid-epoch, .zip and .tar sources,
damaged inputs refused by name, and `aaer train --dataset imagenet100` end to end.
"""
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from aaer.cli import main
from aaer.data import load_dataset
from aaer.data.streaming import (FileImages, Store, StreamingLoader, crop_params, eval_size,
                                 eval_image)

WNIDS = ["n03000134", "n01440764", "n02102040"]          # listed unsorted on purpose
SIZES = [(40, 30), (64, 48), (30, 50), (56, 56)]


def smooth(rng, w, h):
    """A smooth random colour image (JPEG-friendly, unlike noise)."""
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def write_imagenet100(root, n_train=4, n_val=2, seed=0):
    rng = np.random.default_rng(seed)
    top = os.path.join(root, "Imagenet-100")
    os.makedirs(top)
    with open(os.path.join(top, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    for split, n in (("train", n_train), ("val", n_val)):
        for w in WNIDS:
            d = os.path.join(top, split, w)
            os.makedirs(d)
            for i in range(n):
                sw, sh = SIZES[(i + len(w)) % len(SIZES)]
                ext = ".JPEG" if i % 2 == 0 else ".jpg"
                smooth(rng, sw, sh).save(os.path.join(d, f"{w}_{i}{ext}"), quality=90)
    return top


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("in100")
    write_imagenet100(str(root))
    return root


def test_classes_are_the_sorted_wnids_and_labels_follow_the_folders(tree):
    ds = load_dataset("imagenet100", str(tree), image_size=16, workers=0)
    assert ds.classes == sorted(WNIDS) and ds.num_classes == 3
    x = ds.train_x
    assert isinstance(x, FileImages) and x.shape == (12, 3, 16, 16)
    for rel, label in zip(x.rels, ds.train_y.tolist()):
        assert rel.split("/")[-2] == ds.classes[label]
    assert ds.test_x.shape == (6, 3, 16, 16) and ds.test_x.dtype == torch.uint8
    assert sorted(ds.test_y.tolist()) == [0, 0, 1, 1, 2, 2]
    # first-N subsets cover the classes (one fixed class-mixed order)
    assert len(set(ds.train_y[:4].tolist())) >= 2
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)


def test_random_resized_crop_bounds_over_many_draws():
    rng = np.random.default_rng(0)
    W, H = 500, 375
    fractions, ratios = [], []
    for _ in range(20000):
        top, left, h, w = crop_params(W, H, rng)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W and h > 0 and w > 0
        fractions.append(h * w / (H * W))
        ratios.append(w / h)
    # rounding to whole pixels moves the bounds by less than a pixel's worth
    assert min(fractions) >= 0.08 * 0.97 and max(fractions) <= 1.0
    assert min(ratios) >= 0.75 * 0.97 and max(ratios) <= 4 / 3 * 1.03
    # log-uniform ratio: about half the crops are wider than tall
    assert 0.45 < np.mean(np.array(ratios) > 1) < 0.6
    assert 0.4 < np.mean(fractions) < 0.7                       # E U(0.08, 1) = 0.54
    # a strip no allowed crop fits in falls back to the center crop of ratio 4/3
    top, left, h, w = crop_params(1000, 10, np.random.default_rng(1))
    assert (top, left, h, w) == (0, (1000 - 13) // 2, 10, 13)


def test_training_crops_have_the_size_and_flip_half_the_time(tree):
    ds = load_dataset("imagenet100", str(tree), image_size=24, workers=0)
    loader = StreamingLoader(ds.train_x, ds.train_y, 5, shuffle=True, seed=0, workers=0)
    xs = [x for x, _ in loader]
    assert [tuple(x.shape) for x in xs] == [(5, 3, 24, 24), (5, 3, 24, 24), (2, 3, 24, 24)]
    assert all(x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
               for x in xs)
    rng = np.random.default_rng(7)
    flips = []
    for _ in range(2000):
        crop_params(64, 48, rng)
        flips.append(rng.random() < 0.5)
    assert 0.45 < np.mean(flips) < 0.55


def test_the_eval_transform_is_resize_then_center_crop(tmp_path):
    img = smooth(np.random.default_rng(3), 60, 40)
    img.save(tmp_path / "a.png")
    store = Store(str(tmp_path))
    got = eval_image(store, "a.png", 16)
    # by hand: the shorter side 40 -> round(16 * 256 / 224) = 18, the longer int(18 * 60 / 40)
    # = 27; the center 16x16 starts at (round(2 / 2), round(11 / 2)) = (1, 6)
    assert eval_size(16) == 18 and eval_size(224) == 256
    want = np.asarray(img.resize((27, 18), Image.BILINEAR).crop((6, 1, 22, 17)))
    assert np.array_equal(got, want.transpose(2, 0, 1))


def test_batches_depend_on_the_seed_only(tree):
    ds = load_dataset("imagenet100", str(tree), image_size=16, workers=0)

    def epoch(seed, workers, world=1, rank=0):
        loader = StreamingLoader(ds.train_x, ds.train_y, 4, shuffle=True, seed=seed,
                                 workers=workers, rank=rank, world_size=world)
        try:
            return [(x.clone(), y.clone()) for x, y in loader]
        finally:
            loader.close()

    a, b, c = epoch(0, 0), epoch(0, 2), epoch(1, 0)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    # two ranks' shares of a batch are the one-process batch's images, crops included
    r0, r1 = epoch(0, 0, 2, 0), epoch(0, 0, 2, 1)
    one = epoch(0, 0)
    x_one = torch.cat([x for x, _ in one])
    got = torch.stack([t for pair in zip(torch.cat([x for x, _ in r0]),
                                         torch.cat([x for x, _ in r1])) for t in pair])
    assert torch.equal(got[:len(x_one)], x_one)


def test_resume_mid_epoch_equals_the_uninterrupted_epoch(tree):
    ds = load_dataset("imagenet100", str(tree), image_size=16, workers=0)
    make = lambda: StreamingLoader(ds.train_x, ds.train_y, 3, shuffle=True, seed=5, workers=0)
    full = make()
    full.set_epoch(1)
    want = [x.clone() for x, _ in full]
    first = make()
    first.set_epoch(1)
    it = iter(first)
    got = [next(it).__getitem__(0).clone() for _ in range(2)]
    state = first.state_dict()
    again = make()
    again.load_state_dict(state)
    again.set_epoch(1)
    got += [x.clone() for x, _ in again]
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("pack", ["zip", "tar"])
def test_zip_and_tar_sources_give_the_same_data(tree, tmp_path, pack):
    archive = tmp_path / f"Imagenet-100.{pack}"
    top = tree / "Imagenet-100"
    if pack == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for here, _, files in os.walk(top):
                for f in files:
                    full = os.path.join(here, f)
                    z.write(full, os.path.relpath(full, tree))
    else:
        with tarfile.open(archive, "w") as t:
            t.add(top, arcname="Imagenet-100")
    a = load_dataset("imagenet100", str(tree), image_size=16, workers=0)
    b = load_dataset("imagenet100", str(archive), image_size=16, workers=2)
    assert a.classes == b.classes and torch.equal(a.test_x, b.test_x)
    assert torch.equal(a.train_y, b.train_y)
    la = StreamingLoader(a.train_x, a.train_y, 4, shuffle=True, seed=0, workers=0)
    lb = StreamingLoader(b.train_x, b.train_y, 4, shuffle=True, seed=0, workers=2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(la, lb))
    lb.close()
    with pytest.raises(ValueError, match="compressed tar"):
        gz = tmp_path / "Imagenet-100.tar.gz"
        gz.write_bytes(b"\x1f\x8b" + b"\0" * 100)
        load_dataset("imagenet100", str(gz), image_size=16)


def test_damaged_inputs_are_refused_by_name(tree, tmp_path, capsys):
    bad = tmp_path / "nowids"
    shutil.copytree(tree, bad)
    os.remove(bad / "Imagenet-100" / "wnids.txt")
    rc = main(["train", "--dataset", "imagenet100", "--data-dir", str(bad), "--out-dir",
               str(tmp_path / "r1"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "wnids.txt" in err and "does not exist" in err
    assert not (tmp_path / "r1").exists()
    # a corrupt test JPEG: refused while loading, before anything is written
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    victim = broken / "Imagenet-100" / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    victim.write_bytes(b"\xff\xd8not really a jpeg")
    rc = main(["train", "--dataset", "imagenet100", "--data-dir", str(broken), "--image-size",
               "16", "--workers", "0", "--out-dir", str(tmp_path / "r2"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{WNIDS[0]}_0.JPEG" in err and "not a readable image" in err
    assert not (tmp_path / "r2").exists()
    # a class folder wnids.txt does not list
    odd = tmp_path / "odd"
    shutil.copytree(tree, odd)
    os.makedirs(odd / "Imagenet-100" / "train" / "n99999999")
    smooth(np.random.default_rng(0), 20, 20).save(
        odd / "Imagenet-100" / "train" / "n99999999" / "a.jpg")
    with pytest.raises(ValueError, match="n99999999.*not among the classes"):
        load_dataset("imagenet100", str(odd), image_size=16, workers=0)


def test_a_corrupt_training_jpeg_stops_training_naming_it(tree, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    d = broken / "Imagenet-100" / "train" / WNIDS[1]
    for f in os.listdir(d):
        (d / f).write_bytes(b"\xff\xd8garbage")
    rc = main(["train", "--dataset", "imagenet100", "--data-dir", str(broken), "--image-size",
               "16", "--workers", "0", "--model", "small-cnn", "--epochs", "1",
               "--batch-size", "4", "--eval-protocol", "none", "--no-progress", "--out-dir",
               str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and WNIDS[1] in err and "not a readable image" in err


def test_train_imagenet100_end_to_end(tree, tmp_path, capsys):
    out = tmp_path / "Imagenet100_RS-AAER_8"
    rc = main(["train", "--dataset", "imagenet100", "--data-dir", str(tree), "--image-size",
               "32", "--workers", "2", "--method", "rs-aaer", "--epochs", "1", "--batch-size",
               "4", "--eval-protocol", "quick", "--no-progress", "--out-dir", str(out),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    import json
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["model"]["name"] == "resnet18-imagenet"
    assert cfg["sources"]["model.name"] == "dataset imagenet100"
    assert cfg["data"]["shape"] == [3, 32, 32] and cfg["data"]["augmentation"]["streamed"]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["n"] == 12 and row["images_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1
    assert "img/s" in (out / "train.log").read_text()
    res = json.loads((out / "results.json").read_text())
    assert res["evaluation"]["n"] == 6
    # AAER.py infers the data set from such an out-dir name
    from aaer.cli import infer_dataset
    assert infer_dataset("Imagenet100_RS-AAER_8") == "imagenet100"
    assert infer_dataset("ImageNet-100_x") == "imagenet100"


def test_a_streamed_run_killed_mid_epoch_resumes_to_the_same_weights(tree, tmp_path):
    """kill + resume = the uninterrupted run, with the streaming loader (2 workers)."""
    import signal

    from aaer.errors import TrainingInterrupted
    from aaer.training import TrainConfig, build_trainer, train
    from tests.helpers.tiny import signal_at
    ds = load_dataset("imagenet100", str(tree), image_size=16, workers=2)

    def cfg(out):
        return TrainConfig(dataset="imagenet100", model="small-cnn", method="rs-aaer",
                           image_size=16, workers=2, epochs=2, batch_size=4,
                           eval_protocol="none", progress=False, device="cpu",
                           out_dir=str(out))
    train(cfg(tmp_path / "ref"), ds)
    trainer = build_trainer(cfg(tmp_path / "cut"), ds)
    signal_at(trainer, 1, 0, signal.SIGTERM)            # after the 1st of 3 batches
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    train(cfg(tmp_path / "cut"), ds, resume=True)
    a = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
