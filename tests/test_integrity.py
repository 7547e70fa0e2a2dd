"""Data integrity gaps not covered by test_data*.py: a download cut off mid-transfer leaves
no partial file, zip members with absolute or nested `..` paths are refused, and the
decoded cache is rebuilt when a source file changes size while keeping its mtime."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
import zipfile

import numpy as np
import pytest

from aaer.data import load_dataset
from aaer.data.download import download_file, safe_extract
from tests.helpers.files import write_idx_set


@pytest.fixture
def truncating_server():
    """An HTTP server that promises 100000 bytes, sends 4096 and hangs up."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 4096)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_cut_off_leaves_no_partial_file(truncating_server, tmp_path):
    full_md5 = hashlib.md5(b"x" * 100000).hexdigest()     # the file the server promised
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    with pytest.raises(ValueError) as e:
        download_file(f"{truncating_server}/cifar-10-python.tar.gz", str(dest), full_md5)
    # a short transfer is caught by the checksum: the 4096 bytes that came are discarded
    assert f"expected md5 {full_md5}" in str(e.value)
    assert hashlib.md5(b"x" * 4096).hexdigest() in str(e.value) and "discarded" in str(e.value)
    assert os.listdir(tmp_path / "dl") == []       # no .part file, no half file
    # an earlier complete file is not replaced by the failed attempt
    dest.write_bytes(b"complete")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(f"{truncating_server}/cifar-10-python.tar.gz", str(dest), full_md5)
    assert dest.read_bytes() == b"complete" and os.listdir(tmp_path / "dl") == [dest.name]


@pytest.mark.parametrize("member", ["/tmp/aaer-evil-abs.txt", "ok/../../evil.txt",
                                    "a/b/../../../evil.txt"])
def test_zip_traversal_members_refused_before_writing(tmp_path, member):
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/fine.txt", b"fine")
        zf.writestr(member, b"evil")
    with pytest.raises(ValueError, match="refusing to extract"):
        safe_extract(str(z), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []      # not even the safe member
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/aaer-evil-abs.txt")


def test_cache_rebuilt_when_only_the_size_changes(tmp_path, monkeypatch):
    from aaer.data import datasets as data_sets
    root = tmp_path / "m"
    write_idx_set(str(root), np.random.default_rng(0), n_train=5, n_test=3, gz=False)
    calls = []
    real = data_sets.PARSERS["mnist"]
    monkeypatch.setitem(data_sets.PARSERS, "mnist", lambda src: calls.append(src) or real(src))
    first = load_dataset("mnist", str(root))
    assert len(calls) == 1 and len(first.train_y) == 5
    # rewrite the training set with one more image but the old mtime
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    stats = {p: p.stat() for p in (images, labels)}
    new = write_idx_set(str(tmp_path / "n"), np.random.default_rng(1), n_train=6, n_test=3,
                        gz=False)
    for p in (images, labels):
        p.write_bytes((tmp_path / "n" / p.name).read_bytes())
        os.utime(p, ns=(stats[p].st_atime_ns, stats[p].st_mtime_ns))
        assert p.stat().st_mtime_ns == stats[p].st_mtime_ns
        assert p.stat().st_size != stats[p].st_size
    second = load_dataset("mnist", str(root))
    assert len(calls) == 2 and len(second.train_y) == 6
    assert second.train_y.tolist() == new["train"][1].tolist()
