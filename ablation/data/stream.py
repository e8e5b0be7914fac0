"""Streaming an image folder too big to hold: loader workers decode, crop and batch every step.

One loader item is one training step: this rank's part of global batch `step` of the epoch, as
uint8 (b, crops, 3, S, S) crops and int64 labels. Everything in it is a function of the epoch's
seed and the step alone (the permutation from the epoch seed, as the resident batcher draws it;
the crop draws from a seed derived from (epoch seed, step), drawn for the whole global batch and
then sharded), so resuming at step k mid-epoch replays the same batches, and the ranks of a DDP
run see disjoint parts that together make the global batch, whatever the number of workers.

Decoding (per worker, one CPU core each): JPEGs through libjpeg-turbo, only the rows and columns
the image's crops need (the _jpegcrop extension; whole images through simplejpeg without it), at
1/2, 1/4 or 1/8 scale whenever every crop of the image stays at least S pixels on each side there
(DCT scaling does the downscaling almost for free); other formats (PNG, CMYK JPEG) through
torchvision. Each crop is resized with torch's antialiased uint8 bilinear resize (channels-last,
its fast path). With `decode="device"` the workers only read the
files and draw the boxes; the main process decodes the batch on the training device with
torchvision's batched `decode_jpeg` (nvJPEG on a GPU). A file that cannot be decoded stops the
cell with its path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..augment.ops import Crop
from ..seeding import stable_seed
from .batcher import spread
from .folders import Split
from .source_crop import DRAWS, boxes, draw
from .sources import eight_bits, loader_workers, quiet_decoders

try:  # region decoding (setup.py builds it where libjpeg's headers are); else whole images
    from . import _jpegcrop
except ImportError:
    _jpegcrop = None

SAMPLE_SEED = 0  # the source crops of StreamBatcher.sample
SCALES = (8, 4, 2)  # DCT scale factors with fast (SIMD) paths in libjpeg-turbo; 3/4, 5/8 ... are slower than 1


def _simplejpeg() -> ModuleType:
    """simplejpeg, imported where a JPEG is first read: importing this module (the cell does) needs no
    decoder, so a machine without it runs every cell that streams no folder."""
    try:
        import simplejpeg
    except ImportError:
        raise ImportError("streaming an image folder needs the package 'simplejpeg' (pip install simplejpeg)") from None
    return simplejpeg


class UnreadableImage(ValueError):
    """A file of the folder that does not decode; the message names it."""


def _unreadable(path: str, error: Exception) -> UnreadableImage:
    return UnreadableImage(f"cannot decode image {path}: {str(error).strip().splitlines()[0]}")


@dataclass
class Encoded:
    """A file read, with its size from the header; `image` is set when it is no plain JPEG (PNG, CMYK,
    an odd subsampling) and was decoded by torchvision on reading."""

    path: str
    data: bytes
    height: int
    width: int
    image: Tensor | None = None


def _read(path: str) -> Encoded:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableImage(f"cannot read image {path}: {e.strerror or e}") from None
    if not data:
        raise UnreadableImage(f"cannot decode image {path}: empty file (0 bytes)")
    if data[:2] == b"\xff\xd8":
        try:
            h, w, colorspace, _ = _simplejpeg().decode_jpeg_header(data)
            if colorspace not in ("CMYK", "YCCK"):
                return Encoded(path, data, h, w)
        except ValueError:
            pass
    try:
        with quiet_decoders():
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise _unreadable(path, e) from None
    return Encoded(path, data, image.shape[1], image.shape[2], eight_bits(image))


def _boxes(
    items: Sequence[Encoded], crop: Crop | None, u: Tensor, centre: float = 1.0
) -> tuple[list[list[list[float]]], list[list[bool]]]:
    """Boxes and flips of every image's crops (u: (images, crops, DRAWS)), as Python lists, in one draw."""
    n = u.shape[1]
    h = torch.tensor([e.height for e in items], dtype=torch.float32).repeat_interleave(n)
    w = torch.tensor([e.width for e in items], dtype=torch.float32).repeat_interleave(n)
    box, flip = boxes(crop, u.flatten(0, 1), h, w, centre)
    return box.view(len(items), n, 4).tolist(), flip.view(len(items), n).tolist()


def _scale(box: list[list[float]], size: int) -> int:
    """The largest DCT scale factor at which every box keeps at least `size` pixels per side (else 1)."""
    shortest = min(min(b[2], b[3]) for b in box)
    return next((f for f in SCALES if shortest / f >= size), 1)


def _span(start: float, length: float, scale: float) -> tuple[int, int]:
    """Pixels [first, end) of a box side at a decoding scale; at least one pixel."""
    first = math.floor(start * scale)
    return first, max(first + 1, math.ceil((start + length) * scale))


def _crops(
    image: Tensor,
    box: list[list[float]],
    flip: list[bool],
    scale: tuple[float, float],
    size: int,
    out: Tensor,
    origin: tuple[int, int] = (0, 0),
) -> None:
    """Write each box (full-resolution pixels) resized to size x size into out (k, size, size, 3: the
    layout torch's fast uint8 resize writes). `image` (3,h,w uint8) is the image at `scale` (its size /
    the full size), or its part from `origin` (row, column) on."""
    sy, sx = scale
    for k, (x0, y0, bw, bh) in enumerate(box):
        (top, bottom), (left, right) = _span(y0, bh, sy), _span(x0, bw, sx)
        crop = image[None, :, top - origin[0] : bottom - origin[0], left - origin[1] : right - origin[1]]
        if image.device.type == "cpu":
            crop = crop.contiguous(memory_format=torch.channels_last)  # torch's fast (AVX2) uint8 resize needs it
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        else:  # CUDA's antialiased resize takes floats
            crop = (
                F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
        crop = crop[0].permute(1, 2, 0)
        out[k] = crop.flip(1) if flip[k] else crop


def _region(box: list[list[float]], scale: tuple[float, float], height: int, width: int) -> tuple[int, ...]:
    """(top, left, bottom, right) around every box at a decoding scale, within the scaled image."""
    rows = [_span(y0, bh, scale[0]) for _, y0, _, bh in box]
    cols = [_span(x0, bw, scale[1]) for x0, _, bw, _ in box]
    return (
        min(r[0] for r in rows),
        min(c[0] for c in cols),
        min(height, max(r[1] for r in rows)),
        min(width, max(c[1] for c in cols)),
    )


def _decode(item: Encoded, box: list[list[float]], flip: list[bool], size: int, out: Tensor) -> None:
    """Decode one image on this CPU (only the region its boxes need, at 1/2, 1/4 or 1/8 scale when every
    box allows) and write its crops."""
    if item.image is not None:
        _crops(item.image, box, flip, (1.0, 1.0), size, out)
        return
    f, h, w = _scale(box, size), item.height, item.width
    sh, sw = -(-h // f), -(-w // f)  # libjpeg's scaled size
    scale = (sh / h, sw / w)
    try:
        if _jpegcrop is not None:
            top, left, bottom, right = _region(box, scale, sh, sw)
            pixels, x_start, width = _jpegcrop.decode_region(item.data, f, left, top, right - left, bottom - top)
            image = torch.frombuffer(pixels, dtype=torch.uint8).view(bottom - top, width, 3).permute(2, 0, 1)
            _crops(image, box, flip, scale, size, out, origin=(top, x_start))
            return
        decoder = _simplejpeg()
        pixels = (
            decoder.decode_jpeg(item.data, "RGB", min_height=sh, min_width=sw, min_factor=f)
            if f > 1
            else decoder.decode_jpeg(item.data, "RGB")
        )
    except ValueError as e:
        raise UnreadableImage(f"cannot decode image {item.path}: {e}") from None
    _crops(torch.from_numpy(pixels).permute(2, 0, 1), box, flip, scale, size, out)


def decode_crops(path: str, crop: Crop | None, u: Tensor, size: int, centre: float = 1.0) -> Tensor:
    """The crops (k, 3, size, size) uint8 of one image for the draws u (k, DRAWS), decoded on this CPU."""
    item = _read(path)
    (box,), (flip,) = _boxes([item], crop, u[None], centre)
    out = torch.empty(len(u), size, size, 3, dtype=torch.uint8)
    _decode(item, box, flip, size, out)
    return out.permute(0, 3, 1, 2)


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

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shard: tuple[int, int],
        size: int,
        crop: Crop | None,
        crops: int,
        decode: str = "workers",
    ):
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

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor | list[tuple], Tensor]:
        epoch_seed, step = key
        rank, world = self.shard
        b, n = self.batch_size, self.crops
        idx = self.order(epoch_seed)[step * b : (step + 1) * b].tensor_split(world)[rank]
        u = draw(b * n, torch.Generator().manual_seed(stable_seed(epoch_seed, step)))
        u = u.view(b, n, DRAWS).tensor_split(world)[rank]
        items = [_read(self.files[i]) for i in idx.tolist()]
        box, flip = _boxes(items, self.crop, u)
        if self.decode == "device":
            return [
                (item.data if item.image is None else item.image, bx, fl, item.path)
                for item, bx, fl in zip(items, box, flip)
            ], self.labels[idx]
        out = torch.empty(len(items), n, self.size, self.size, 3, dtype=torch.uint8)
        for j, item in enumerate(items):
            _decode(item, box[j], flip[j], self.size, out[j])
        return out.permute(0, 1, 4, 2, 3), self.labels[idx]


def _decode_jpegs(device: torch.device, jpegs: list[tuple]) -> list[Tensor]:
    """torchvision's batched decode_jpeg on `device`; on failure, name the file that does not decode."""
    data = [torch.frombuffer(bytearray(j[0]), dtype=torch.uint8) for j in jpegs]
    if not data:
        return []
    with quiet_decoders():
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            for one, j in zip(data, jpegs):
                try:
                    decode_jpeg(one, mode=ImageReadMode.RGB, device=device)
                except RuntimeError as e:
                    raise _unreadable(j[3], e) from None
            raise


def decode_on(device: torch.device, items: list[tuple], crops: int, size: int) -> Tensor:
    """Device decoding of a loader item (per image: JPEG bytes or an image decoded on reading, boxes,
    flips, path): the JPEGs in one batched call on `device`, every crop made there."""
    images = iter(_decode_jpegs(device, [item for item in items if isinstance(item[0], bytes)]))
    out = torch.empty(len(items), crops, size, size, 3, dtype=torch.uint8, device=device)
    for j, (data, box, flip, _) in enumerate(items):
        image = next(images) if isinstance(data, bytes) else data.to(device)
        _crops(image, box, flip, (1.0, 1.0), size, out[j])
    return out.permute(0, 1, 4, 2, 3)


def _one_line(err: UnreadableImage) -> UnreadableImage:
    """The worker's own message, without the loader's traceback around it."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return UnreadableImage(lines[-1].removeprefix(f"{UnreadableImage.__name__}: ").strip())


class StreamBatcher:
    """Per-step batches of a streamed folder, with the interface of DeviceBatcher (len, device, epoch)."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shard: tuple[int, int],
        size: int,
        crop: Crop | None,
        crops: int,
        workers: int,
        device: torch.device,
        decode: str = "workers",
    ):
        world = shard[1]
        if batch_size < world or batch_size > len(split.files):
            raise ValueError(
                f"batch_size {batch_size} must be >= world size {world} and <= the {len(split.files)} images"
            )
        self.dataset = StepBatches(split, batch_size, shard, size, crop, crops, decode)
        self.sampler = StepSampler(len(self.dataset))
        self.decode_device, self.crops, self.size = device if decode == "device" else None, crops, size
        workers = loader_workers(workers)
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda" and decode == "workers",
            persistent_workers=workers > 0,
            collate_fn=_keep,
        )
        self.device = torch.device("cpu")  # where the epoch generator lives

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, n: int, seed: int = SAMPLE_SEED) -> Tensor:
        """n training images spread over the files (see `spread`) with their source crops drawn from
        `seed`: uint8 (n, crops, 3, S, S), the input the views take, the same on every rank and every
        call: a fixed batch for measurements (decoded here, on this CPU)."""
        files = [self.dataset.files[i] for i in spread(len(self.dataset.files), n).tolist()]
        u = draw(len(files) * self.crops, torch.Generator().manual_seed(seed)).view(len(files), self.crops, DRAWS)
        crops = [decode_crops(path, self.dataset.crop, u[j], self.size) for j, path in enumerate(files)]
        return torch.stack(crops) if crops else torch.empty(0, self.crops, 3, self.size, self.size, dtype=torch.uint8)

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


T = TypeVar("T")


def _keep(item: T) -> T:
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
        return decode_crops(path, None, torch.zeros(1, DRAWS), self.size, self.centre)[0]

    def __getitem__(self, index: slice) -> Tensor:
        if not isinstance(index, slice):
            raise TypeError("LazyImages supports slices only")
        files = self.files[index]
        with ThreadPoolExecutor(self.workers) as pool:
            images = list(pool.map(self._one, files))
        return torch.stack(images) if images else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
