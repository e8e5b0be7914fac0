"""Data: whole splits as uint8 tensors (embedded shapes, CIFAR, STL-10, image folders), batched on the device;
image folders too big to hold streamed from disk (stream.py), either chosen by size (serve.py)."""
from __future__ import annotations

from .batcher import DeviceBatcher, fits_on_device
from .embedded import make_embedded
from .serve import FolderSet, load_folder, source_views, stream_batcher
from .sources import DATASETS, ImageFiles, ImageSet, default_cache_dir, load_dataset

__all__ = ["DATASETS", "DeviceBatcher", "FolderSet", "ImageFiles", "ImageSet", "default_cache_dir",
           "fits_on_device", "load_dataset", "load_folder", "make_embedded", "source_views", "stream_batcher"]
