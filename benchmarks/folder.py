"""Image-folder throughput: our streaming loader vs torchvision's ImageFolder + PIL + RandomResizedCrop.

Both decode JPEGs of ImageNet-like sizes (long side 500 px, short side 333-500, either orientation,
quality 90; made here, in a temporary folder) and hand uint8 batches of random resized crops (the
paper's: area U[0.08, 1], ratio [3/4, 4/3], horizontal flip) at --size px to the main process,
through a DataLoader with the same --workers (one CPU core each).
- ours: ablation.data.stream.StreamBatcher (one loader item per step; libjpeg-turbo decoding of the
  crop's region only, at 1/2, 1/4 or 1/8 scale where the crop allows; torch's antialiased uint8 resize);
- reference: ImageFolder(transform=RandomResizedCrop + RandomHorizontalFlip + PILToTensor).
Workers persist; one untimed warm-up epoch each, then --rounds timed epochs alternating between
the two (best of each), so that load from other processes hits both alike. With --device cuda,
also our device path (files read by the workers, torchvision's batched decode_jpeg on the GPU,
crops there) and decode_jpeg alone. The last line is `ratio: R` (ours / reference, CPU).

    python benchmarks/folder.py [--images 256] [--workers N] [--size 224] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from ablation.augment import parse_spec
from ablation.data import stream
from ablation.data.folders import scan
from ablation.data.stream import StreamBatcher

CLASSES = 4


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields, a texture and mild noise: compresses and decodes like a photo."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.empty((height, width, 3))
    for c in range(3):
        a = rng.uniform(0, 1, 5)
        image[..., c] = (
            0.5
            + 0.25 * np.sin(6 * a[0] * np.pi * x + 6 * a[1]) * np.cos(5 * a[2] * np.pi * y + a[3])
            + 0.15 * np.sin(40 * a[4] * (x + y))
        )
    image += rng.normal(0, 0.03, image.shape)
    return Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8))


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        short = int(rng.integers(333, 501))
        width, height = (500, short) if rng.uniform() < 0.75 else (short, 500)
        folder = root / "train" / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(rng, width, height).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def timed(epoch: Callable[[], Iterable], device: torch.device | None = None) -> tuple[float, int]:
    """(seconds, images) of one pass."""
    start, images = time.perf_counter(), 0
    for x, _ in epoch():
        images += x.shape[0]
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cuda: also our GPU decode path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp), args.images)
        split = scan(root, "train")
        crop = parse_spec("crop").ops[0]
        ours = StreamBatcher(split, args.batch, (0, 1), args.size, crop, 1, args.workers, torch.device("cpu"))
        reference = DataLoader(
            ImageFolder(
                str(root / "train"),
                transform=T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.PILToTensor()]),
            ),
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        seed = iter(range(10**6))
        contenders = {
            "ours": lambda: ours.epoch(torch.Generator().manual_seed(next(seed))),
            "reference": lambda: reference,
        }
        best = dict.fromkeys(contenders, 0.0)
        for epoch in contenders.values():  # warm-up: workers start, files enter the page cache
            timed(epoch)
        for _ in range(args.rounds):
            for name, epoch in contenders.items():
                seconds, images = timed(epoch)
                best[name] = max(best[name], images / seconds)
        cores = max(1, args.workers)
        print(
            f"{args.images} JPEGs (long side 500 px, short 333-500), random resized crop to {args.size} px, "
            f"batch {args.batch}, {args.workers} loader workers, best of {args.rounds} epochs each"
        )
        how = "region decoding" if stream._jpegcrop is not None else "whole-image decoding (no _jpegcrop)"
        print(
            f"ours (StreamBatcher: libjpeg-turbo {how}, reduced scale where the crop allows, torch resize): "
            f"{best['ours']:.0f} images/s ({best['ours'] / cores:.0f} per core)"
        )
        print(
            f"reference (ImageFolder + PIL + RandomResizedCrop + PILToTensor, DataLoader): "
            f"{best['reference']:.0f} images/s ({best['reference'] / cores:.0f} per core)"
        )
        device = torch.device(args.device)
        if device.type == "cuda":
            gpu = StreamBatcher(split, args.batch, (0, 1), args.size, crop, 1, args.workers, device, "device")
            timed(lambda: gpu.epoch(torch.Generator().manual_seed(0)), device)
            rate = max(
                n / s
                for s, n in (
                    timed(lambda r=r: gpu.epoch(torch.Generator().manual_seed(r)), device) for r in range(args.rounds)
                )
            )
            print(
                f"ours on {device} (workers read files, batched decode_jpeg and crops on the GPU): {rate:.0f} images/s"
            )
            data = [read_file(f) for f in split.files]
            decode_jpeg(data[: args.batch], mode=ImageReadMode.RGB, device=device)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(0, len(data), args.batch):
                decode_jpeg(data[i : i + args.batch], mode=ImageReadMode.RGB, device=device)
            torch.cuda.synchronize(device)
            print(
                f"decode_jpeg alone on {device}, batches of {args.batch}: "
                f"{len(data) / (time.perf_counter() - start):.0f} images/s"
            )
        print(f"ratio: {best['ours'] / best['reference']:.2f}")


if __name__ == "__main__":
    main()
