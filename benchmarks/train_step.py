"""SimCLR training throughput: ours (device-resident data, batched augmentation) vs lightly's recipe.

Both train a ResNet-18 (--encoder) with the CIFAR stem and a 512-2048-128 projection head on the same uint8
images (the real CIFAR-10 JPEG copy in ../shared when present, else the embedded set), batch
--batch, 32 px, NT-Xent (tau 0.5), LARS (lr 0.075 sqrt(B), momentum 0.9, weight decay 1e-6, biases
and norm parameters excluded). Both run the model channels_last under bf16 autocast on CUDA (fp32 on
CPU), so the ratio measures what differs: data path, augmentation, loss, optimiser, and compilation.

Ours, a cell's own training (ablation.training: `Training.setup`, then `Training.step` on the batches of
`Training.epoch`), nothing rebuilt here: uint8 set on the device, DeviceBatcher, the cell's views (its
augment.base, then "crop+color(s=0.5)", mode="symmetric") per batch on the device with the cell's per-step
generators, NT-Xent, multi-tensor LARS with its warmup + cosine schedule, and the model compiled with
torch.compile where the cell would (--compile, default the cell's auto: on CUDA).
Reference, lightly's SimCLR recipe: the images served as PIL images (as torchvision's CIFAR10
does) through `SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`, a shuffling
DataLoader with --workers workers, `NTXentLoss(temperature=0.5)`, `SimCLRProjectionHead`, and
lightly's LARS over `get_weight_decay_parameters` groups, eager as in lightly's examples.

Each round times --steps steps of each side, ours first, each after --warmup untimed steps on a fresh
epoch iterator (batches the reference prefetched while ours ran are dropped); the best round of
each side counts. Throughput counts source images (two views each), data loading and augmentation
included. The last line is `ratio: R` (ours / reference, images per second).

lightly is needed for the reference only; install it into a separate venv (see `require_lightly`).
`--reference none` measures ours alone and then ends with `ratio: n/a`.

    python benchmarks/train_step.py [--device auto] [--batch 256] [--steps 5] [--warmup 1] [--workers N]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ablation.accel import uses_compile
from ablation.config import CellConfig, build_config
from ablation.data import ImageSet, load_dataset
from ablation.model import build_encoder
from ablation.optim import scaled_lr
from ablation.training import Training, resolve_device

REPO = Path(__file__).resolve().parents[1]
CIFAR_CANDIDATES = (REPO.parent / "shared" / "datasets" / "cifar10-jpeg", REPO / "shared" / "datasets" / "cifar10-jpeg")
VIEWS = "crop+color(s=0.5)"
TEMPERATURE, WEIGHT_DECAY, MOMENTUM = 0.5, 1e-6, 0.9
Step = Callable[[], object]


def require_lightly() -> None:
    """Exit with install instructions when lightly is missing (it is a benchmark-only dependency)."""
    if importlib.util.find_spec("lightly") is None:
        sys.exit(
            "lightly is not installed; the reference path needs it: pip install lightly\n"
            "To keep the project's venv untouched, use a separate one, from the repository root:\n"
            "  python -m venv ../venv-bench && ../venv-bench/bin/pip install -e . lightly\n"
            "  ../venv-bench/bin/python benchmarks/train_step.py"
        )


def load_images(root: Path | None, n: int) -> tuple[ImageSet, str]:
    """About `n` training images (an equal share per class) of the folder set, else the embedded set."""
    root = root or next((p for p in CIFAR_CANDIDATES if (p / "train").is_dir()), None)
    if root is None:
        train, _ = load_dataset("embedded", size=32, n_train=n, n_test=10, seed=0)
        return train, "embedded"
    n_classes = sum(1 for d in os.scandir(root / "train") if d.is_dir())
    train, _ = load_dataset("folder", root, size=32, per_class=math.ceil(n / n_classes))
    return train, str(root)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """As the cell's precision 'auto': bf16 autocast on CUDA, fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def forward_pair(model: nn.Module, v1: Tensor, v2: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Both views in one forward (batch-norm statistics over 2B), as the cell and lightly's benchmarks do."""
    with autocast(device):
        z = model(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))
    return z.float().chunk(2)


def train(loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def encoder(name: str, seed: int) -> tuple[nn.Module, int]:
    """The same initial encoder (CIFAR stem) and its feature size for both sides."""
    torch.manual_seed(seed)
    return build_encoder(name, cifar_stem=True)


def our_config(
    batch: int, device: torch.device, seed: int, encoder_name: str = "resnet18", compile_setting: str = "auto"
) -> CellConfig:
    """The cell that ours trains: the recipe above as a cell's config."""
    return build_config(
        {},
        [
            f"model.encoder={encoder_name}",
            "model.cifar_stem=true",
            "model.head_hidden=2048",
            "model.out_dim=128",
            f"train.batch_size={batch}",
            f"train.seed={seed}",
            f"augment.views={VIEWS}",
            "augment.mode=symmetric",
            f"loss.temperature={TEMPERATURE}",
            "optim.name=lars",
            "optim.lr_scaling=sqrt",
            f"optim.weight_decay={WEIGHT_DECAY}",
            f"optim.momentum={MOMENTUM}",
            f"train.device={device}",
            f"train.compile={compile_setting}",
        ],
    )


def ours(cfg: CellConfig, data: ImageSet) -> Callable[[], Step]:
    """A factory of step functions over fresh epochs: a cell's own setup and step (ablation.training)."""
    training = Training.setup(cfg, data, resolve_device(cfg.train.device))

    return training.stepper


class PILImages(Dataset):
    """uint8 images served as PIL images through `transform`, as torchvision's CIFAR10 serves them."""

    def __init__(self, data: ImageSet, transform: Callable[[Image.Image], object]):
        self.arrays = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels, self.transform = data.labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[object, int]:
        return self.transform(Image.fromarray(self.arrays[i])), self.labels[i]


def forever(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def lightly_recipe(
    data: ImageSet, batch: int, device: torch.device, seed: int, workers: int, encoder_name: str = "resnet18"
) -> Callable[[], Step]:
    """A factory of step functions over fresh DataLoader epochs, following lightly's SimCLR examples."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS

    backbone, dim = encoder(encoder_name, seed)
    head = SimCLRProjectionHead(dim, 2048, 128)
    model = nn.Sequential(backbone, head).to(device, memory_format=torch.channels_last)
    decay, no_decay = get_weight_decay_parameters([backbone, head])
    optimizer = LARS(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=scaled_lr(None, batch, "sqrt"),
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    model.train()
    criterion = NTXentLoss(temperature=TEMPERATURE)
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    loader = DataLoader(
        PILImages(data, transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def start() -> Step:
        source = forever(loader)

        def step() -> None:
            (v1, v2), _ = next(source)
            v1, v2 = v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)
            z1, z2 = forward_pair(model, v1, v2, device)
            train(criterion(z1, z2), optimizer)

        return step

    return start


def images_per_s(start: Callable[[], Step], batch: int, warmup: int, steps: int, device: torch.device) -> float:
    step = start()
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the best images/s of each side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best of each side counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reference DataLoader workers")
    parser.add_argument("--images", type=int, default=2560, help="training images loaded (CIFAR: per class share)")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="image folder root/train/<class>/* (default: the CIFAR-10 JPEG copy in ../shared, else the embedded set)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoder",
        default="resnet18",
        choices=("resnet18", "small_cnn"),
        help="both sides' encoder (small_cnn: quick CPU checks)",
    )
    parser.add_argument(
        "--compile", default="auto", choices=("auto", "always", "never"), help="ours: train.compile (auto: on CUDA)"
    )
    parser.add_argument(
        "--reference",
        default="lightly",
        choices=("lightly", "none"),
        help="none: measure ours alone (no lightly needed)",
    )
    args = parser.parse_args(argv)
    if args.reference == "lightly":
        require_lightly()
    import importlib.metadata

    lightly_version = importlib.metadata.version("lightly") if args.reference == "lightly" else "not used"
    device = resolve_device(args.device)
    data, source = load_images(args.data_root, args.images)
    print(
        f"device {device}, torch {torch.__version__} ({torch.get_num_threads()} threads), lightly "
        f"{lightly_version}, {len(data)} images from {source}, {args.encoder}, batch {args.batch}, "
        f"{args.warmup} warmup + {args.steps} timed steps x {args.rounds} rounds, reference workers "
        f"{args.workers}",
        flush=True,
    )
    sides = {"ours": ours(our_config(args.batch, device, args.seed, args.encoder, args.compile), data)}
    if args.reference == "lightly":
        sides["lightly"] = lightly_recipe(data, args.batch, device, args.seed, args.workers, args.encoder)
    best = dict.fromkeys(sides, 0.0)
    for r in range(args.rounds):
        for name, start in sides.items():
            ips = images_per_s(start, args.batch, args.warmup, args.steps, device)
            best[name] = max(best[name], ips)
            print(f"round {r + 1} {name}: {ips:,.1f} images/s", flush=True)
    compiled = "compiled" if uses_compile(args.compile, device) else "eager"
    print(
        f"ours (uint8 on {device}, DeviceBatcher, TwoViews({VIEWS!r}, symmetric) on device, nt_xent, "
        f"LARS, {compiled}): {best['ours']:,.1f} images/s"
    )
    if args.reference == "none":
        print("ratio: n/a (no reference)")
        return best
    print(
        f"lightly (SimCLRTransform on PIL, DataLoader {args.workers} workers, NTXentLoss, LARS, eager): "
        f"{best['lightly']:,.1f} images/s"
    )
    print(f"ratio: {best['ours'] / best['lightly']:.2f}")
    return best


if __name__ == "__main__":
    main()
