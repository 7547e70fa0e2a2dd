"""Data sets in their release formats -> uint8 tensors, and a batch loader that augments on
the device. See datasets.py (loading), loader.py (batches), download.py (fetching)."""

from .datasets import DATASETS, Dataset, augmentation_for, load_dataset, streamed
from .loader import BatchLoader
from .streaming import FileImages, StreamingLoader


def make_loader(x, y, batch_size: int, *, workers: int | None = None, **kw):
    """The loader of a training split: a BatchLoader over uint8 tensors, or a
    StreamingLoader over the files of a streamed data set (pad and flip do not apply: its
    random-resized crop and flip happen in the stream)."""
    if isinstance(x, FileImages):
        kw.pop("pad", None), kw.pop("flip", None)
        return StreamingLoader(x, y, batch_size, workers=workers, **kw)
    return BatchLoader(x, y, batch_size, **kw)


__all__ = ["DATASETS", "Dataset", "augmentation_for", "load_dataset", "BatchLoader",
           "FileImages", "StreamingLoader", "make_loader", "streamed"]
