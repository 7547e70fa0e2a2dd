"""Data sets in their release formats -> uint8 tensors, and a batch loader that augments on
the device. See datasets.py (loading), loader.py (batches), download.py (fetching)."""

from .datasets import DATASETS, Dataset, augmentation_for, load_dataset
from .loader import BatchLoader

__all__ = ["DATASETS", "Dataset", "augmentation_for", "load_dataset", "BatchLoader"]
