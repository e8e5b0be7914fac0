"""What cells cost, from their configs alone: a training step's FLOPs and device bytes, the training set
a cell keeps on its device, images per epoch, and a grid's images and GPU-hours still to run.

The step is counted on the meta device (nothing is computed or allocated), so a launcher can size
packs (ablation.pack) and allocations (ablation.sizing) on a machine without a GPU. torch is imported
only to count a step: `ablate status` and `--dry-run`'s estimate read data set sizes without it.
"""

from __future__ import annotations

import json
import statistics
from typing import TYPE_CHECKING

from .config import CellConfig, DataConfig
from .data.folders import train_size as folder_train_size
from .names import DONE, IMAGES_PER_S

if TYPE_CHECKING:
    from .grid import Experiment
    from .status import CellStatus

PROCESS_BYTES = 2**30  # per cell process on a GPU: CUDA context, kernels, allocator slack
COST_CLASSES = 1000  # classes a supervised cell's classifier is counted with (at most ImageNet's)
# Training images per epoch of the known data sets (folders are counted only when asked).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}
TRAIN_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10}  # balanced: data.per_class caps each

_COSTS: dict[tuple, tuple[float, int]] = {}


def step_cost(cfg: CellConfig) -> tuple[float, int]:
    """(FLOPs, bytes on the device) of one cell's training, from its config.

    FLOPs: forward and backward of one step of the method's networks over its views (not its loss),
    counted by FlopCounterMode on the meta device. Bytes: the tensors autograd keeps for the backward
    pass (half under bf16), four copies of the weights (weights, gradients, momentum, spare), the
    augmentation's working copies of the views, and the resident uint8 training set when its size is
    known. Cells that differ only in what does not change the cost (augmentations, loss, seed, ...)
    share one count.
    """
    m, d, t = cfg.model, cfg.data, cfg.train
    key = (
        tuple(vars(m).values()),
        cfg.method,
        json.dumps(cfg.method_args, sort_keys=True),
        json.dumps(vars(d), sort_keys=True),
        t.batch_size,
        t.precision,
    )
    if key not in _COSTS:
        _COSTS[key] = _count(cfg)
    return _COSTS[key]


def _count(cfg: CellConfig) -> tuple[float, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .accel import uses_bf16
    from .training import initial_method

    b, s = cfg.train.batch_size, cfg.data.size
    with torch.random.fork_rng(devices=[]):  # initial_method seeds the global generator
        model = initial_method(cfg, torch.device("meta"), COST_CLASSES)
    x = torch.empty(b, 3, s, s, device="meta").contiguous(memory_format=torch.channels_last)
    kept: list[int] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        outputs = model((x,) * model.n_views)
        sum(
            o.float().sum() for o in (outputs if isinstance(outputs, tuple) else (outputs,)) if o.requires_grad
        ).backward()
    bf16 = uses_bf16(cfg.train.precision, torch.device("cuda"))
    weights = sum(p.numel() for p in model.parameters()) * 4
    views = model.n_views * b * 3 * s * s * 4
    nbytes = sum(kept) // (2 if bf16 else 1) + 4 * weights + 8 * views + resident_bytes(cfg.data)
    return float(flops.get_total_flops()), nbytes


def resident_bytes(data: DataConfig) -> int:
    """The uint8 training set that a cell keeps on its device: its known size (data.per_class counted, a
    folder's files counted) at the stored side; none when the cell keeps it off the device
    (data.resident=never) or streams a folder; none when the size is unknown."""
    from .data.serve import serving

    size = train_size(data)
    if size is None or data.resident == "never":
        return 0
    side = (data.stored_size or data.size) if data.name == "folder" else data.size
    if data.name == "folder" and serving(data.serve, side, size[0]) == "stream":
        return 0
    return size[0] * 3 * side * side


def train_size(d: DataConfig) -> tuple[int, str] | None:
    """(training images per epoch, where a folder's count comes from) of a cell's DataConfig, or None
    when unknown."""
    if d.name == "folder":
        return folder_train_size(d.root, d.classes, d.per_class)
    if d.name == "embedded":
        return d.n_train, ""
    if d.name not in TRAIN_SIZES:
        return None
    images = TRAIN_SIZES[d.name]
    return (images if d.per_class is None else min(images, TRAIN_CLASSES[d.name] * d.per_class)), ""


def measured_rate(rows: list[CellStatus]) -> float | None:
    """Median training images/s of the finished cells."""
    rates = [r.result[IMAGES_PER_S] for r in rows if r.state == DONE and r.result and r.result.get(IMAGES_PER_S)]
    return statistics.median(rates) if rates else None


def estimate(exp: Experiment, rows: list[CellStatus]) -> str:
    """Cells x epochs x images still to train, and GPU-hours of the cells' allocations (nodes x GPUs per node)
    at a measured or configured rate."""
    todo = [r.cell for r in rows if r.state != DONE]
    sizes = [s for c in todo if (s := train_size(c.config.data)) is not None]
    if len(sizes) < len(todo):
        return (
            f"cost: {len(todo)} cells to run (image count unknown for data.name=folder: "
            f"data.root not found; set it to the folder)"
        )
    images = sum(s[0] * c.config.train.epochs for s, c in zip(sizes, todo))
    sources = sorted({s[1] for s in sizes if s[1]})
    line = f"cost: {len(todo)} cells x epochs x images = {images:,} training images" + (
        f" (images per epoch: {'; '.join(sources)})" if sources else ""
    )
    rate, source = measured_rate(rows), "measured"
    if rate is None and exp.slurm.images_per_s:
        rate, source = exp.slurm.images_per_s, "configured slurm.images_per_s"
    if rate:
        gpus = max(1, exp.slurm.gpus_per_node) * exp.slurm.nodes  # the whole allocation of a cell
        line += (
            f"; about {images / rate / 3600 * gpus:.2f} GPU-hours ({gpus} GPU{'s' * (gpus > 1)} a cell) "
            f"at {rate:,.0f} images/s per cell ({source})"
        )
    else:
        line += "; set slurm.images_per_s (or finish one cell) for a GPU-hour estimate"
    return line
