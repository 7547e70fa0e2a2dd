"""benchmarks/gpu_data.py: the JPEG zip packed small for the device and unpacked to the same
entries, byte for byte; a damaged pack is refused."""
import importlib.util
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gpu_data", os.path.join(ROOT, "benchmarks",
                                                                        "gpu_data.py"))
gpu_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_data)


def jpeg(rng, quality=75, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture
def image_zip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("set/", b"")
        for split in ("train", "test"):
            z.writestr(f"set/{split}/", b"")
            for c in ("cat", "dog"):
                z.writestr(f"set/{split}/{c}/", b"")
                for i in range(6):
                    z.writestr(f"set/{split}/{c}/{i:04d}.jpg", jpeg(rng))
        z.writestr("set/train/cat/odd.png", jpeg(rng, fmt="PNG"))   # no JPEG header
    return path


def read_all(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def test_pack_then_unpack_gives_the_same_entries(image_zip, tmp_path):
    r = gpu_data.pack(str(image_zip), str(tmp_path / "p.npz"))
    assert r["entries"] == 32 and r["prefix_bytes"] > 300      # the shared JPEG header
    assert r["pack_bytes"] < r["zip_bytes"]
    with np.load(tmp_path / "p.npz") as f:
        assert int(f["has_prefix"].sum()) == 24                # every JPEG; not the PNG
    gpu_data.unpack(str(tmp_path / "p.npz"), str(tmp_path / "out" / "set.zip"))
    assert read_all(tmp_path / "out" / "set.zip") == read_all(image_zip)


def test_a_damaged_pack_is_refused(image_zip, tmp_path):
    gpu_data.pack(str(image_zip), str(tmp_path / "p.npz"))
    with np.load(tmp_path / "p.npz") as f:
        arrays = {k: f[k].copy() for k in f.files}
    arrays["data"][100] ^= 0xFF
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit, match="do not match the SHA-256"):
        gpu_data.unpack(str(tmp_path / "bad.npz"), str(tmp_path / "x.zip"))
    assert not (tmp_path / "x.zip").exists()
