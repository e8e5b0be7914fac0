"""A cell's data from its config: the (train, test) splits it names, and the batcher that serves the
training split to its steps (on the device when it fits, else per batch, else streamed from disk)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .. import dist
from .batcher import DeviceBatcher, fits_on_device
from .serve import FolderSet, load_folder, stream_batcher
from .sources import ImageSet, load_dataset
from .stream import StreamBatcher

if TYPE_CHECKING:
    from ..config import CellConfig


@functools.lru_cache(maxsize=4)
def _cached_dataset(data_key: tuple) -> tuple[ImageSet, ImageSet]:
    """Data sets stay in memory across the cells of a local grid (they differ in augmentation only)."""
    name, root, size, download, per_class, n_train, n_test, seed = data_key
    return load_dataset(
        name, root, size, download, None, per_class=per_class, n_train=n_train, n_test=n_test, seed=seed
    )


def load_data(cfg: CellConfig) -> tuple[ImageSet | FolderSet, ImageSet | FolderSet]:
    """(train, test) of the cell's data set; a folder's may be served from the source (see serve.py)."""
    d = cfg.data
    if d.name == "folder":
        return load_folder(d)  # resident (ImageSet, or FolderSet at a larger stored size) or streamed
    return _cached_dataset((d.name, d.root, d.size, d.download, d.per_class, d.n_train, d.n_test, d.data_seed))


def training_batcher(
    cfg: CellConfig,
    train: ImageSet | FolderSet,
    device: torch.device,
    shard: tuple[int, int],
    step_bytes: Callable[[], float],
) -> DeviceBatcher | StreamBatcher:
    """The training set on the device when it fits beside the step (`step_bytes()`, counted only on a
    GPU; airbench-style), else batches moved per step; a streamed folder's loader. `shard` = (rank,
    world): this process's share of each global batch."""
    if isinstance(train, FolderSet):
        if train.stored is None:
            return stream_batcher(cfg.data, cfg.augment, cfg.train.batch_size, train, device, shard)
        images = train.stored
    else:
        images = train.images
    images = images.to(device) if resident(cfg.data.resident, images.numel(), device, step_bytes) else images
    return DeviceBatcher(images, train.labels, cfg.train.batch_size, drop_last=True, shard=shard, to=device)


def resident(asked: str, n_bytes: int, device: torch.device, step_bytes: Callable[[], float]) -> bool:
    """Whether the training set lives on `device` (data.resident: always, never, or auto: when it fits),
    one answer for every rank: each rank shuffles on its batcher's device, and a CUDA and a CPU randperm
    of one seed differ, so ranks that chose differently would not split one global batch between them."""
    fits = asked == "always" or (asked == "auto" and fits_on_device(n_bytes, device, step_bytes))
    return not dist.any_rank(not fits, device)
