"""Data: whole splits as uint8 tensors (embedded shapes, CIFAR, STL-10, image folders), batched on the device;
image folders too big to hold streamed from disk (stream.py), either chosen by size (serve.py); a cell's splits
and batcher from its config (loading.py).

Names load on first use, so `ablation.data.folders` (no torch) serves `ablate status` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DeviceBatcher": "batcher",
    "fits_on_device": "batcher",
    "make_embedded": "embedded",
    "FolderSet": "serve",
    "load_folder": "serve",
    "source_views": "serve",
    "stream_batcher": "serve",
    "DATASETS": "sources",
    "ImageFiles": "sources",
    "ImageSet": "sources",
    "default_cache_dir": "cache",
    "load_dataset": "sources",
    "load_data": "loading",
    "training_batcher": "loading",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A name of the submodule that holds it, imported on first use (Any: the names differ in type)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
