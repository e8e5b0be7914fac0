"""Streaming an image folder too big to hold: loader workers decode, crop and batch every step.

One loader item is one training step: this rank's part of global batch `step` of the epoch, as
uint8 (b, crops, 3, S, S) crops and int64 labels. Everything in it is a function of the epoch's
seed and the step alone (the permutation from the epoch seed, as the resident batcher draws it;
the crop draws from a seed derived from (epoch seed, step), drawn for the whole global batch and
then sharded), so resuming at step k mid-epoch replays the same batches, and the ranks of a DDP
run see disjoint parts that together make the global batch, whatever the number of workers.

Decoding (per worker, one CPU core each): JPEGs through libjpeg-turbo (simplejpeg), at 1/2, 1/4 or
1/8 scale whenever every crop of the image stays at least S pixels on each side there (DCT scaling
does the downscaling almost for free); other formats through torchvision. Each crop is resized
with torch's antialiased uint8 bilinear resize. With `decode="device"` the workers only read the
files and draw the boxes; the main process decodes the batch on the training device with
torchvision's batched `decode_jpeg` (nvJPEG on a GPU). A file that cannot be decoded stops the
cell with its path.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import simplejpeg
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from . import protocol as P
from .folders import Split

SCALES = (8, 4, 2)  # DCT scale factors with fast (SIMD) paths in libjpeg-turbo; 3/4, 5/8 ... are slower than 1


class UnreadableImage(ValueError):
    """A file of the folder that does not decode; the message names it."""


def step_seed(epoch_seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"{epoch_seed}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _is_plain_jpeg(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG that libjpeg-turbo decodes to RGB directly, else None (PNG, CMYK, ...)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (h, w) if colorspace not in ("CMYK", "YCCK") else None


def _decode_other(path: str, data: bytes) -> Tensor:
    try:
        with warnings.catch_warnings():  # torchvision >= 0.29: decoders moving to TorchCodec; they still work
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise UnreadableImage(f"cannot decode image {path}: {str(e).strip().splitlines()[0]}") from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UnreadableImage(f"cannot read image {path}: {e.strerror or e}") from None


def _scale(box: Tensor, size: int) -> int:
    """The largest DCT scale factor at which every box keeps at least `size` pixels per side (else 1)."""
    shortest = float(box[:, 2:].min())
    return next((f for f in SCALES if shortest / f >= size), 1)


def _crops(image: Tensor, box: Tensor, flip: Tensor, scale: tuple[float, float], size: int, out: Tensor) -> None:
    """Write each box of `image` (3,h,w uint8, boxes in full-resolution pixels) resized to size x size into out."""
    sy, sx = scale
    for k in range(len(box)):
        x0, y0, bw, bh = box[k].tolist()
        top, left = math.floor(y0 * sy), math.floor(x0 * sx)
        bottom = min(image.shape[1], max(top + 1, math.ceil((y0 + bh) * sy)))
        right = min(image.shape[2], max(left + 1, math.ceil((x0 + bw) * sx)))
        crop = TF.resize(image[:, top:bottom, left:right], [size, size], antialias=True)
        out[k] = crop.flip(-1) if flip[k] else crop


def decode_crops(path: str, crop: P.Crop | None, u: Tensor, size: int, centre: float = 1.0) -> Tensor:
    """The crops (k, 3, size, size) uint8 of one image for the draws u (k, DRAWS), decoded on this CPU."""
    data = _read(path)
    dims = _is_plain_jpeg(data)
    image = None
    if dims is None:
        image = _decode_other(path, data)
        dims = tuple(image.shape[1:])
    h, w = dims
    box, flip = P.boxes(crop, u, torch.full((len(u),), float(h)), torch.full((len(u),), float(w)), centre)
    if image is None:
        f = _scale(box, size)
        try:
            pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // f), min_width=-(-w // f),
                                            min_factor=f) if f > 1 else simplejpeg.decode_jpeg(data, "RGB")
        except ValueError as e:
            raise UnreadableImage(f"cannot decode image {path}: {e}") from None
        image = torch.from_numpy(pixels).permute(2, 0, 1)
    out = torch.empty(len(u), 3, size, size, dtype=torch.uint8)
    _crops(image, box, flip, (image.shape[1] / h, image.shape[2] / w), size, out)
    return out


class StepSampler(Sampler):
    """(epoch seed, step) for each step of the current epoch from `start` on; set before each epoch."""

    def __init__(self, steps: int):
        self.steps, self.epoch_seed, self.start = steps, 0, 0

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch_seed, s) for s in range(self.start, self.steps)])


class StepBatches(Dataset):
    """Loader item (epoch seed, step) -> this rank's crops and labels of global batch `step`."""

    def __init__(self, split: Split, batch_size: int, shard: tuple[int, int], size: int, crop: P.Crop | None,
                 crops: int, decode: str = "workers"):
        self.files, self.labels = split.files, torch.tensor(split.labels, dtype=torch.int64)
        self.batch_size, self.shard, self.size, self.crop, self.crops = batch_size, shard, size, crop, crops
        self.decode = decode
        self._order: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    def order(self, epoch_seed: int) -> Tensor:
        """The epoch's permutation (as DeviceBatcher draws it from a generator with this seed)."""
        if self._order is None or self._order[0] != epoch_seed:
            g = torch.Generator().manual_seed(epoch_seed)
            self._order = (epoch_seed, torch.randperm(len(self.files), generator=g))
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]):
        epoch_seed, step = key
        rank, world = self.shard
        b, n = self.batch_size, self.crops
        idx = self.order(epoch_seed)[step * b:(step + 1) * b].tensor_split(world)[rank]
        u = P.draw(b * n, torch.Generator().manual_seed(step_seed(epoch_seed, step)))
        u = u.view(b, n, P.DRAWS).tensor_split(world)[rank]
        files = [self.files[i] for i in idx.tolist()]
        if self.decode == "device":
            return encoded(files, self.crop, u, self.size), self.labels[idx]
        out = torch.empty(len(files), n, 3, self.size, self.size, dtype=torch.uint8)
        for j, path in enumerate(files):
            out[j] = decode_crops(path, self.crop, u[j], self.size)
        return out, self.labels[idx]


def encoded(files: Sequence[str], crop: P.Crop | None, u: Tensor, size: int) -> list:
    """For device decoding: per image (JPEG bytes, boxes, flips), or its finished crops when it is no
    plain JPEG (PNG, CMYK: decoded here on the CPU)."""
    items = []
    for path, draws in zip(files, u):
        data = _read(path)
        dims = _is_plain_jpeg(data)
        if dims is None:
            items.append(decode_crops(path, crop, draws, size))
            continue
        n = len(draws)
        box, flip = P.boxes(crop, draws, torch.full((n,), float(dims[0])), torch.full((n,), float(dims[1])))
        items.append((torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip, path))
    return items


def decode_on(device: torch.device, items: list, crops: int, size: int) -> Tensor:
    """Decode the JPEGs of `encoded` items in one batched decode_jpeg call on `device`; crop there."""
    jpegs = [item for item in items if isinstance(item, tuple)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            images = iter(decode_jpeg([j[0] for j in jpegs], mode=ImageReadMode.RGB, device=device))
    except RuntimeError as e:
        raise UnreadableImage(f"cannot decode one of {', '.join(j[3] for j in jpegs)}: {e}") from None
    out = torch.empty(len(items), crops, 3, size, size, dtype=torch.uint8, device=device)
    for j, item in enumerate(items):
        if isinstance(item, tuple):
            image = next(images)
            _crops(image, item[1], item[2], (1.0, 1.0), size, out[j])
        else:
            out[j] = item.to(device)
    return out


def _one_line(err: UnreadableImage) -> UnreadableImage:
    """The worker's own message, without the loader's traceback around it."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return UnreadableImage(lines[-1].removeprefix(f"{UnreadableImage.__name__}: ").strip())


class StreamBatcher:
    """Per-step batches of a streamed folder, with the interface of DeviceBatcher (len, device, epoch)."""

    def __init__(self, split: Split, batch_size: int, shard: tuple[int, int], size: int, crop: P.Crop | None,
                 crops: int, workers: int, device: torch.device, decode: str = "workers"):
        rank, world = shard
        if batch_size < world or batch_size > len(split.files):
            raise ValueError(f"batch_size {batch_size} must be >= world size {world} and <= the "
                             f"{len(split.files)} images")
        self.dataset = StepBatches(split, batch_size, shard, size, crop, crops, decode)
        self.sampler = StepSampler(len(self.dataset))
        self.decode_device, self.crops, self.size = device if decode == "device" else None, crops, size
        self.loader = DataLoader(self.dataset, batch_size=None, sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda" and decode == "workers",
                                 persistent_workers=workers > 0, collate_fn=_keep)
        self.device = torch.device("cpu")  # where the epoch generator lives

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}] (steps per epoch); got {start}")
        self.sampler.epoch_seed = generator.initial_seed() if generator is not None else 0
        self.sampler.start = start
        return self._batches()

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        try:
            for x, labels in self.loader:
                if self.decode_device is not None:
                    x = decode_on(self.decode_device, x, self.crops, self.size)
                yield x, labels
        except UnreadableImage as err:
            raise _one_line(err) from None


def _keep(item):
    """collate_fn: items are whole batches already."""
    return item


class LazyImages:
    """A split's evaluation images, decoded on demand: `images[i:j]` is uint8 (j-i, 3, S, S), the centre
    square (`centre` x the shorter side) resized to S, decoded by `workers` threads."""

    def __init__(self, files: Sequence[str], size: int, centre: float = 1.0, workers: int = 1):
        self.files, self.size, self.centre, self.workers = files, size, centre, max(1, workers)

    def __len__(self) -> int:
        return len(self.files)

    def _one(self, path: str) -> Tensor:
        return decode_crops(path, None, torch.zeros(1, P.DRAWS), self.size, self.centre)[0]

    def __getitem__(self, index: slice) -> Tensor:
        if not isinstance(index, slice):
            raise TypeError("LazyImages supports slices only")
        files = self.files[index]
        with ThreadPoolExecutor(self.workers) as pool:
            images = list(pool.map(self._one, files))
        return torch.stack(images) if images else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)

