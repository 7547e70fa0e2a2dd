"""Fetch official data-set files with MD5 verification, and unpack archives safely.

A download goes to a temporary file next to its destination and is renamed into place
only after its checksum matched, so an interrupted or corrupted download never leaves a
file that looks complete. Extraction refuses members that would land outside the target
directory (absolute paths, `..`, links pointing out) and unpacks into a temporary
directory first, so a half-extracted tree is never mistaken for a data set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile

from aaer.errors import DownloadFailed, UsageError
from .sources import resources_for

_CHUNK = 1 << 20


def md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str, md5: str, *, timeout: float = 60.0) -> str:
    """Download `url` to `dest`, checking its MD5. Skips the download when `dest` already
    exists with the right checksum. Returns `dest`."""
    if os.path.isfile(dest) and md5_file(dest) == md5:
        return dest
    dest_dir = os.path.dirname(os.path.abspath(dest))
    os.makedirs(dest_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix="." + os.path.basename(dest) + ".", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DownloadFailed(
                    f"could not download {url}: {e}. Check the network, or point "
                    f"AAER_DATA_MIRROR at a server holding {os.path.basename(dest)}") from e
            with response:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != md5:
            raise UsageError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; "
                             f"the download was discarded")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root + os.sep)


def _check_member_name(archive: str, name: str, target: str) -> None:
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UsageError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if not _inside(target, os.path.join(target, name)):
        raise UsageError(f"refusing to extract {archive}: member {name!r} would be written "
                         f"outside {target}")


def _check_tar(archive: str, tar: tarfile.TarFile, target: str) -> None:
    for m in tar.getmembers():
        _check_member_name(archive, m.name, target)
        if m.issym():
            # a symlink's target is relative to the directory holding the link
            dest = os.path.join(target, os.path.dirname(m.name), m.linkname)
            if os.path.isabs(m.linkname) or not _inside(target, dest):
                raise UsageError(f"refusing to extract {archive}: symlink {m.name!r} -> "
                                 f"{m.linkname!r} points outside {target}")
        elif m.islnk():
            if os.path.isabs(m.linkname) or not _inside(target, os.path.join(target, m.linkname)):
                raise UsageError(f"refusing to extract {archive}: hard link {m.name!r} -> "
                                 f"{m.linkname!r} points outside {target}")
        elif not (m.isfile() or m.isdir()):
            raise UsageError(f"refusing to extract {archive}: member {m.name!r} is a device or "
                             f"fifo, not a file or directory")


def safe_extract(archive: str, target: str) -> list[str]:
    """Unpack a .tar[.gz|.bz2|.xz] or .zip archive into `target` and return the names of the
    top-level entries created. Every member is checked before anything is written."""
    os.makedirs(target, exist_ok=True)
    staging = tempfile.mkdtemp(dir=target, prefix=".extract-")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_member_name(archive, name, staging)
                zf.extractall(staging)
        else:
            try:
                tar = tarfile.open(archive)
            except tarfile.TarError as e:
                raise UsageError(f"{archive} is neither a zip nor a tar archive: {e}") from e
            with tar:
                _check_tar(archive, tar, staging)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:
                    tar.extractall(staging)
        top = sorted(os.listdir(staging))
        for entry in top:
            dest = os.path.join(target, entry)
            if os.path.isdir(dest) and not os.path.islink(dest):
                shutil.rmtree(dest)
            os.replace(os.path.join(staging, entry), dest)
        return top
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, dest_dir: str, *, mirror: str | None = None, extract: bool = True) -> list[str]:
    """Download every official file of data set `name` into `dest_dir` (verified), and unpack
    the archives among them. Returns the paths of the downloaded files."""
    paths = []
    for res in resources_for(name, mirror):
        path = download_file(res.url, os.path.join(dest_dir, res.filename), res.md5)
        if extract and res.filename.endswith((".tar.gz", ".tgz", ".zip")):
            safe_extract(path, dest_dir)
        paths.append(path)
    return paths
