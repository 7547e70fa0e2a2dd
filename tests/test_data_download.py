"""Tests of aaer.data downloads and archive extraction, against a local HTTP server on
127.0.0.1 serving archives built here: a good MD5 installs the file, a wrong one raises and
leaves nothing behind, and unsafe archive members are refused before anything is written."""

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch

from aaer.data import load_dataset
from aaer.data import sources
from aaer.data.download import download_file, fetch, safe_extract
from tests.helpers.files import tar_folder, write_cifar10, write_idx_set


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'www' over HTTP on 127.0.0.1; yields (folder, base URL, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_good_md5_installs_file(server, tmp_path):
    www, base, log = server
    (www / "blob.bin").write_bytes(os.urandom(3 << 20))  # several read chunks
    dest = tmp_path / "dl" / "blob.bin"
    download_file(f"{base}/blob.bin", str(dest), _md5(www / "blob.bin"))
    assert dest.read_bytes() == (www / "blob.bin").read_bytes()
    assert os.listdir(tmp_path / "dl") == ["blob.bin"]
    n = len(log)
    download_file(f"{base}/blob.bin", str(dest), _md5(www / "blob.bin"))  # present and valid
    assert len(log) == n


def test_download_wrong_md5_raises_and_leaves_nothing(server, tmp_path):
    www, base, _ = server
    (www / "blob.bin").write_bytes(b"x" * 5000)
    actual = _md5(www / "blob.bin")
    dest = tmp_path / "dl" / "blob.bin"
    with pytest.raises(ValueError) as e:
        download_file(f"{base}/blob.bin", str(dest), "0" * 32)
    assert "0" * 32 in str(e.value) and actual in str(e.value) and "blob.bin" in str(e.value)
    assert os.listdir(tmp_path / "dl") == []
    # a bad download never replaces a file already there
    dest.write_bytes(b"stale")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(f"{base}/blob.bin", str(dest), "0" * 32)
    assert dest.read_bytes() == b"stale" and os.listdir(tmp_path / "dl") == ["blob.bin"]
    with pytest.raises(ConnectionError, match="missing.bin"):
        download_file(f"{base}/missing.bin", str(tmp_path / "dl" / "missing.bin"), actual)
    assert os.listdir(tmp_path / "dl") == ["blob.bin"]


def test_load_dataset_download_cifar10_from_mirror(server, tmp_path, monkeypatch):
    www, base, log = server
    src = tmp_path / "src"
    tx, ty, vx, vy, names = write_cifar10(str(src), np.random.default_rng(0))
    archive = tar_folder(str(src), "cifar-10-batches-py", str(www / "cifar-10-python.tar.gz"))
    # the real table entry, with the checksum of the archive built here
    res = sources.SOURCES["cifar10"][0]
    monkeypatch.setitem(sources.SOURCES, "cifar10",
                        (sources.Resource(res.filename, res.url, _md5(archive)),))
    monkeypatch.setenv("AAER_DATA_MIRROR", base + "/")
    root = tmp_path / "data"
    d = load_dataset("cifar10", str(root), download=True)
    assert log == ["/cifar-10-python.tar.gz"]
    assert torch.equal(d.train_x, torch.from_numpy(tx)) and d.test_y.tolist() == vy.tolist()
    assert sorted(os.listdir(root)) == [".aaer_cache", "cifar-10-batches-py", "cifar-10-python.tar.gz"]
    load_dataset("cifar10", str(root), download=True)  # already there: no second request
    assert len(log) == 1


def test_load_dataset_download_mnist_wrong_md5_leaves_no_file(server, tmp_path, monkeypatch):
    www, base, _ = server
    data = write_idx_set(str(www), np.random.default_rng(2))
    table = tuple(sources.Resource(r.filename, r.url, _md5(www / r.filename))
                  for r in sources.SOURCES["mnist"])
    monkeypatch.setitem(sources.SOURCES, "mnist", table)
    monkeypatch.setenv("AAER_DATA_MIRROR", base)
    d = load_dataset("mnist", str(tmp_path / "ok"), download=True)
    assert torch.equal(d.test_x[:, 0], torch.from_numpy(data["t10k"][0]))
    bad = table[:2] + (sources.Resource(table[2].filename, table[2].url, "f" * 32),) + table[3:]
    monkeypatch.setitem(sources.SOURCES, "mnist", bad)
    with pytest.raises(ValueError, match="expected md5 f{32}"):
        load_dataset("mnist", str(tmp_path / "bad"), download=True)
    assert sorted(os.listdir(tmp_path / "bad")) == ["train-images-idx3-ubyte.gz",
                                                    "train-labels-idx1-ubyte.gz"]


def test_mirror_argument_and_table():
    assert [r.url for r in sources.resources_for("svhn", "http://127.0.0.1:9/m/")] == [
        "http://127.0.0.1:9/m/train_32x32.mat", "http://127.0.0.1:9/m/test_32x32.mat"]
    assert sources.SOURCES["cifar10"][0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    for name, table in sources.SOURCES.items():
        for r in table:
            assert len(r.md5) == 32 and int(r.md5, 16) >= 0 and r.url.endswith(r.filename)
    with pytest.raises(ValueError, match="downloadable: cifar10, cifar100"):
        sources.resources_for("imagefolder")


def _tar(path, members):
    """members: list of (TarInfo kwargs, payload or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            ti = tarfile.TarInfo(info.pop("name"))
            for k, v in info.items():
                setattr(ti, k, v)
            if payload is not None:
                ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return str(path)


@pytest.mark.parametrize("member", [
    {"name": "../evil"},
    {"name": "ok/../../evil"},
    {"name": "/tmp/evil-absolute"},
    {"name": "link", "type": tarfile.SYMTYPE, "linkname": "../evil"},
    {"name": "sub/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
    {"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../evil"},
])
def test_unsafe_tar_members_are_refused_before_writing(tmp_path, member):
    good = {"name": "data/a.txt"}
    payload = None if member.get("type") in (tarfile.SYMTYPE, tarfile.LNKTYPE) else b"pwned"
    archive = _tar(tmp_path / "x.tar.gz", [(good, b"fine"), (dict(member), payload)])
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="refusing to extract"):
        safe_extract(archive, str(target))
    assert os.listdir(target) == []  # not even the safe member, no staging folder left
    assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/evil-absolute")


def test_safe_extract_tar_and_zip(tmp_path):
    archive = _tar(tmp_path / "x.tar.gz", [({"name": "top/a.txt"}, b"A"),
                                           ({"name": "top/in", "type": tarfile.SYMTYPE,
                                             "linkname": "a.txt"}, None)])
    assert safe_extract(archive, str(tmp_path / "o")) == ["top"]
    assert (tmp_path / "o" / "top" / "in").read_bytes() == b"A"
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/b.txt", b"B")
    safe_extract(str(z), str(tmp_path / "o"))  # replaces the earlier top/
    assert sorted(os.listdir(tmp_path / "o" / "top")) == ["b.txt"]
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil.txt", b"E")
    with pytest.raises(ValueError, match="would be written outside"):
        safe_extract(str(z), str(tmp_path / "o2"))
    assert not (tmp_path / "evil.txt").exists() and os.listdir(tmp_path / "o2") == []


def test_fetch_extracts_archives(server, tmp_path, monkeypatch):
    www, base, _ = server
    src = tmp_path / "src"
    write_cifar10(str(src), np.random.default_rng(1))
    archive = tar_folder(str(src), "cifar-10-batches-py", str(www / "cifar-10-python.tar.gz"))
    monkeypatch.setitem(sources.SOURCES, "cifar10", (sources.Resource(
        "cifar-10-python.tar.gz", "unused", _md5(archive)),))
    paths = fetch("cifar10", str(tmp_path / "d"), mirror=base)
    assert paths == [str(tmp_path / "d" / "cifar-10-python.tar.gz")]
    assert sorted(os.listdir(tmp_path / "d" / "cifar-10-batches-py")) == sorted(
        os.listdir(src / "cifar-10-batches-py"))
