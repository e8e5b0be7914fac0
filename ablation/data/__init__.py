"""Data: whole splits as uint8 tensors (embedded shapes, CIFAR, STL-10, image folders), batched on the device."""
from __future__ import annotations

from .batcher import DeviceBatcher, fits_on_device
from .embedded import make_embedded
from .sources import DATASETS, ImageFiles, ImageSet, default_cache_dir, load_dataset, streaming_loader

__all__ = ["DATASETS", "DeviceBatcher", "ImageFiles", "ImageSet", "default_cache_dir", "fits_on_device",
           "load_dataset", "make_embedded", "streaming_loader"]
