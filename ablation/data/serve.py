"""Serving an image folder to a cell: resident or streamed, chosen by its size (data.serve).

- resident: decoded once (and cached) at data.stored_size, kept as uint8 on the device or in host
  memory (data.resident); with a stored size above data.size the first crop is drawn there on the
  device (source_crop.py). At stored size = data.size this is exactly the path of CIFAR and the
  embedded set, and the cell gets a plain ImageSet.
- stream: loader workers read, decode and crop every image each epoch from the full image (stream.py).
auto: resident when train + test at the stored size fit in MAX_RESIDENT_BYTES, else stream.
Either way every draw is seeded by (seed, epoch, step), and a resumed run replays the same batches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .folders import Split, classes_key, scan
from .source_crop import SourceViews, split_source_crop
from .sources import MAX_RESIDENT_BYTES, ImageSet, folder_sets
from .stream import LazyImages, StreamBatcher

if TYPE_CHECKING:
    from ..config import AugmentConfig, DataConfig


@dataclass
class FolderSet:
    """A split served with its first crop at the source. `images[i:j]` gives evaluation images (uint8
    at data.size, centre crop); `stored` holds the resident stored images, `split` the streamed files."""

    images: Any
    labels: Tensor
    classes: list[str]
    stored: Tensor | None = None
    split: Split | None = None

    def __len__(self) -> int:
        return len(self.labels)


class CentreCrop:
    """Slices of stored images (N,3,R,R) cut to their centre S x S (ImageNet's resize 256, crop 224)."""

    def __init__(self, images: Tensor, size: int):
        self.stored, self.size = images, size
        self.offset = (images.shape[-1] - size) // 2

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, index: slice) -> Tensor:
        o, s = self.offset, self.size
        return self.stored[index][..., o : o + s, o : o + s]


EVAL_CENTRE = 0.875  # the share of the shorter side an evaluation image keeps: the usual resize 256, centre crop 224


def eval_centre(size: int, stored_size: int | None) -> float:
    """The centre crop of a streamed evaluation image, as a fraction of its shorter side: the one a resident
    set at data.stored_size gives (size / stored_size), else EVAL_CENTRE (ImageNet's 224 of 256)."""
    return size / stored_size if stored_size else EVAL_CENTRE


def serving(serve: str, side: int, n_images: int) -> str:
    """'resident' or 'stream' for data.serve; auto counts the bytes of n_images stored at side x side."""
    if serve != "auto":
        return serve
    return "resident" if n_images * 3 * side * side <= MAX_RESIDENT_BYTES else "stream"


def load_folder(data: DataConfig) -> tuple[ImageSet | FolderSet, ImageSet | FolderSet]:
    """(train, test) of a folder (data: the cell's DataConfig); kept in memory across a local grid's cells."""
    return _load(
        data.root, data.size, data.stored_size, data.serve, classes_key(data.classes), data.per_class, data.workers
    )


@functools.lru_cache(maxsize=2)
def _load(
    root: str,
    size: int,
    stored_size: int | None,
    serve: str,
    classes: tuple | str | None,
    per_class: int | None,
    workers: int,
) -> tuple[ImageSet | FolderSet, ImageSet | FolderSet]:
    train, test = scan(root, "train", classes, per_class), scan(root, "test", classes)  # one-line errors first
    side = stored_size or size
    if serving(serve, side, len(train.files) + len(test.files)) == "stream":

        def streamed(s: Split) -> FolderSet:
            return FolderSet(
                LazyImages(s.files, size, eval_centre(size, stored_size), workers),
                torch.tensor(s.labels, dtype=torch.int64),
                list(s.classes),
                split=s,
            )

        return streamed(train), streamed(test)
    sets = folder_sets(root, (train, test), side, per_class, workers)  # scanned once, above
    if side == size:
        return sets

    def stored(s: ImageSet) -> FolderSet:
        return FolderSet(CentreCrop(s.images, size), s.labels, s.classes, stored=s.images)

    return stored(sets[0]), stored(sets[1])


def stream_batcher(
    data: DataConfig,
    augment: AugmentConfig,
    batch_size: int,
    train: FolderSet,
    device: torch.device,
    shard: tuple[int, int],
) -> StreamBatcher:
    """The streaming loader of a cell (data, augment: the cell's config sections)."""
    first = split_source_crop(augment.views, augment.base, augment.mode)
    if train.split is None:
        raise ValueError("stream_batcher: the training set is not streamed")
    return StreamBatcher(
        train.split, batch_size, shard, data.size, first.crop, first.crops, data.workers, device, data.decode
    )


def source_views(data: DataConfig, augment: AugmentConfig, train: FolderSet) -> SourceViews:
    """The cell's two views when the first crop is taken at the source (streamed or stored images)."""
    return SourceViews(
        split_source_crop(augment.views, augment.base, augment.mode), data.size, stored=train.stored is not None
    )
