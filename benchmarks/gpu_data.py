"""The CIFAR-10 JPEG zip, small enough to travel to a lent GPU machine, and back again.

The device tool carries the working tree and the ignored paths named in ``carry`` in 64 MiB
in all; ``../shared/datasets/cifar10-jpeg.zip`` is 61.8 MiB (52.7 MiB of JPEG bytes, the
rest zip headers) and the tree itself about 5.5 MiB, so the zip does not fit beside it.
The 60,000 JPEGs, all 32x32 at quality 75, begin with the same ~620 bytes (JFIF header,
quantisation and Huffman tables, frame and scan headers). ``pack`` keeps that common
beginning once and each image's remaining bytes, with the zip's entry names, in one .npz
(about 18 MB); ``unpack`` writes the zip again, entry for entry the same bytes (checked
against the SHA-256 of all entries recorded by ``pack``), so aaer reads exactly the images
it reads here. Nothing is re-encoded: no pixel changes.

    python benchmarks/gpu_data.py pack ../shared/datasets/cifar10-jpeg.zip data/cifar10-jpeg.npz
    python benchmarks/gpu_data.py unpack data/cifar10-jpeg.npz /tmp/data/cifar10-jpeg.zip
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zipfile

import numpy as np

FORMAT = 1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the shared data sets beside the checkout (../shared), or beside a worktree's parent
SOURCES = [os.path.join(ROOT, *up, "shared", "datasets", "cifar10-jpeg.zip")
           for up in (("..",), ("..", ".."))]
DEFAULT_SRC = next((s for s in SOURCES if os.path.exists(s)), SOURCES[0])
DEFAULT_PACK = os.path.join(ROOT, "data", "cifar10-jpeg.npz")


def _digest(blobs) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def common_prefix(blobs: list[bytes], sample: int = 4096) -> bytes:
    """The longest beginning shared by the largest group of files that open alike (their
    first 16 bytes), among the first ``sample``; a file without it is stored whole."""
    groups: dict[bytes, list[bytes]] = {}
    for b in blobs[:sample]:
        groups.setdefault(b[:16], []).append(b)
    return os.path.commonprefix(max(groups.values(), key=len)) if groups else b""


def pack(src: str, dest: str) -> dict:
    """Write ``dest`` (.npz) from the zip ``src``; returns sizes and the digest."""
    with zipfile.ZipFile(src) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        blobs = [b"" if i.is_dir() else z.read(i) for i in infos]
    files = [b for n, b in zip(names, blobs) if not n.endswith("/")]
    prefix = common_prefix(files)
    has = np.array([b.startswith(prefix) and not n.endswith("/") for n, b in zip(names, blobs)])
    tails = [b[len(prefix):] if h else b for b, h in zip(blobs, has)]
    offsets = np.zeros(len(tails) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in tails])
    digest = _digest(blobs)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp.npz"
    np.savez(tmp, format=np.array(FORMAT), names=np.frombuffer("\n".join(names).encode(),
                                                               dtype=np.uint8),
             prefix=np.frombuffer(prefix, dtype=np.uint8), has_prefix=has,
             data=np.frombuffer(b"".join(tails), dtype=np.uint8), offsets=offsets,
             sha256=np.frombuffer(digest.encode(), dtype=np.uint8))
    os.replace(tmp, dest)
    return {"entries": len(names), "prefix_bytes": len(prefix), "digest": digest,
            "zip_bytes": os.path.getsize(src), "pack_bytes": os.path.getsize(dest)}


def entries(path: str) -> tuple[list[str], list[bytes], str]:
    """The zip entries (names, bytes) a pack holds, and the digest recorded when packed."""
    with np.load(path) as f:
        if int(f["format"]) != FORMAT:
            raise SystemExit(f"{path}: pack format {int(f['format'])}, this script reads "
                             f"{FORMAT}")
        names = f["names"].tobytes().decode().split("\n")
        prefix, data, offsets = f["prefix"].tobytes(), f["data"].tobytes(), f["offsets"]
        has, digest = f["has_prefix"], f["sha256"].tobytes().decode()
    blobs = [(prefix if h else b"") + data[offsets[i]:offsets[i + 1]]
             for i, h in enumerate(has)]
    return names, blobs, digest


def unpack(path: str, dest: str) -> dict:
    """Write the zip ``dest`` (entries stored, as the original) from the pack ``path``;
    SystemExit when its bytes are not the packed zip's."""
    names, blobs, digest = entries(path)
    if _digest(blobs) != digest:
        raise SystemExit(f"{path}: the unpacked entries do not match the SHA-256 recorded "
                         "when it was packed; pack it again")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for name, blob in zip(names, blobs):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob)
    os.replace(tmp, dest)
    return {"entries": len(names), "digest": digest, "zip_bytes": os.path.getsize(dest)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="zip -> compact .npz")
    a.add_argument("src", nargs="?", default=DEFAULT_SRC)
    a.add_argument("dest", nargs="?", default=DEFAULT_PACK)
    b = sub.add_parser("unpack", help=".npz -> the zip again (checked)")
    b.add_argument("src", nargs="?", default=DEFAULT_PACK)
    b.add_argument("dest")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        r = pack(args.src, args.dest)
        print(f"packed {r['entries']} entries of {args.src} ({r['zip_bytes'] / 2**20:.1f} MiB) "
              f"into {args.dest} ({r['pack_bytes'] / 2**20:.1f} MiB; common JPEG beginning "
              f"{r['prefix_bytes']} bytes, stored once); sha256 {r['digest'][:16]}...")
    else:
        r = unpack(args.src, args.dest)
        print(f"unpacked {r['entries']} entries into {args.dest} "
              f"({r['zip_bytes'] / 2**20:.1f} MiB), sha256 {r['digest'][:16]}... as packed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
