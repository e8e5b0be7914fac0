"""Two-view SimCLR augmentation throughput: ours (batched) vs torchvision.transforms.v2 per sample.

Ours: TwoViews("crop+color", mode="symmetric") on a float (B, 3, S, S) batch: crop with p=0.5
flip, then colour distortion s=1, independent draws for the two views. Reference: the usual
per-image CPU data path, RandomResizedCrop(S), RandomHorizontalFlip, RandomApply([ColorJitter(
0.8, 0.8, 0.8, 0.2)], p=0.8), RandomGrayscale(0.2), called twice on each image, on uint8 and on
float images; the faster of the two is the reference. Per-sample cost does not depend on the batch,
so the reference runs on the first --ref-images images. Timings alternate between the contenders
(best of --reps each) so that load from other processes hits both alike; both use the same
number of torch threads (--threads; DataLoader workers run the reference with 1 each).
Throughput counts source images (two views each). The last line is `ratio: R` (ours / reference).

    python benchmarks/augment.py [--device cpu] [--size 32] [--batch 512] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from ablation.augment import TwoViews


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def reference(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(0.2),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns images/s of each contender (ours, uint8, float)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ref-images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    batch = images.to(device).float().div(255)
    generator = torch.Generator(device=device).manual_seed(0)
    ours, ref = TwoViews("crop+color", mode="symmetric"), reference(args.size)
    n_ref = min(args.ref_images, args.batch)
    ref_data = {"uint8": images[:n_ref], "float": images[:n_ref].float().div(255)}
    cpu = torch.device("cpu")
    contenders = {"ours": (lambda: ours(batch, generator), args.batch, device)}
    for name, data in ref_data.items():
        contenders[name] = (lambda data=data: [(ref(img), ref(img)) for img in data], n_ref, cpu)

    best = {name: float("inf") for name in contenders}
    for rep in range(args.reps + 1):  # the first round is warmup
        for name, (fn, n, dev) in contenders.items():
            if rep:
                best[name] = min(best[name], seconds(fn, dev) / n)
            else:
                fn()
    ips = {name: 1 / t for name, t in best.items()}
    print(f"threads: {torch.get_num_threads()}, images {args.size}x{args.size}, best of {args.reps}")
    print(f"ours {ours!r} on {device}, batch {args.batch}: {ips['ours']:,.0f} images/s")
    for name in ref_data:
        print(f"torchvision.transforms.v2 per sample, {name} on cpu ({n_ref} images): {ips[name]:,.0f} images/s")
    print(f"ratio: {ips['ours'] / max(ips['uint8'], ips['float']):.2f}")
    return ips


if __name__ == "__main__":
    main()
