"""Sizing a cell before it is submitted: its peak device memory per rank, and an allocation it fits in.

A cell's global batch is split evenly over its ranks (slurm.nodes x slurm.tasks_per_node, one per GPU).
Its memory per rank is linear in the batch per rank: a fixed part (weights, gradients, optimiser state,
the weights that autograd keeps, a resident training set) and a part per image (the activations that
autograd keeps for the backward pass, the augmentation's working copies of the views). Both come from
`cost.step_cost`, which counts them on the meta device (nothing is computed or allocated), at two small
batches. Counting every tensor autograd saves overcounts the activations (a convolution's input and the
batch norm's output before it share memory), so the part per image is scaled by the ratio of a measured
peak to the count, per encoder (CALIBRATION; measured on the CPU in fp32 with `measure_peak_bytes`, which
tests/test_sizing.py checks again on other batches and sizes). On a GPU the caching allocator and the
kernels' workspaces add ALLOCATOR_SLACK, and the CUDA context cost.PROCESS_BYTES; that part is assumed,
not measured here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import CellConfig, from_dict
from .cost import PROCESS_BYTES, step_cost

if TYPE_CHECKING:
    from .grid import Experiment
    from .slurm.config import SlurmConfig

# measured / counted bytes per image of a training step, fp32 on the CPU (data.size 32: small_cnn at batch
# 64 and 512, resnet18 at 8 and 32; resnet50 without the CIFAR stem at 64 px, batch 4 and 16)
CALIBRATION = {"small_cnn": 0.57, "resnet18": 0.63, "resnet50": 0.46}
ALLOCATOR_SLACK = 1.2  # a GPU's caching allocator and cuDNN workspaces over the tensors' own bytes (assumed)
NODE_GPUS = 8  # GPUs of the node a suggestion assumes when the slurm section asks for fewer
GB = 1e9
COUNTED_AT = (2, 4)  # the batches per rank the two meta-device counts are made at


@dataclass(frozen=True)
class Footprint:
    """Bytes of one rank's training step: `fixed` + `per_image` x its batch."""

    fixed: float
    per_image: float

    def bytes(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    def largest_batch(self, capacity: float) -> int:
        """The largest batch per rank whose step fits in `capacity` bytes (0: none)."""
        return max(0, math.floor((capacity - self.fixed) / self.per_image))


def at_batch(cfg: CellConfig, batch: int) -> CellConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))


def footprint(cfg: CellConfig) -> Footprint:
    """The cell's step as counted on the meta device, its part per image calibrated (see the module doc)."""
    small, large = (step_cost(at_batch(cfg, b))[1] for b in COUNTED_AT)
    per_image = (large - small) / (COUNTED_AT[1] - COUNTED_AT[0])
    return Footprint(small - per_image * COUNTED_AT[0], per_image * CALIBRATION[cfg.model.encoder])


def ranks(slurm: SlurmConfig) -> int:
    """The processes a cell runs on (slurm: a SlurmConfig)."""
    return slurm.nodes * slurm.tasks_per_node


def device_bytes(fp: Footprint, batch_per_rank: int) -> float:
    """Peak bytes on one GPU of a rank that trains `batch_per_rank` images a step."""
    return ALLOCATOR_SLACK * fp.bytes(batch_per_rank) + PROCESS_BYTES


def step_bytes(cfg: CellConfig, batch_per_rank: int) -> float:
    """Peak bytes of a running rank's step on its GPU with the training set off the device: what a
    resident set must leave free (data.loading). The CUDA context is not counted: the process has it."""
    off = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resident="never"))
    return ALLOCATOR_SLACK * footprint(off).bytes(batch_per_rank)


def step_capacity(gpu_mem_gb: float) -> float:
    """The bytes a step may use on a GPU of `gpu_mem_gb` (the inverse of `device_bytes`)."""
    return (gpu_mem_gb * GB - PROCESS_BYTES) / ALLOCATOR_SLACK


def fits(fp: Footprint, batch_per_rank: int, gpu_mem_gb: float) -> bool:
    return fp.bytes(batch_per_rank) <= step_capacity(gpu_mem_gb)


def on_gpus(slurm: SlurmConfig) -> bool:
    """Whether the slurm section asks for GPUs (sizing applies only then)."""
    return slurm.gpus_per_node > 0 or bool(slurm.gres)


def refusal(exp: Experiment) -> str | None:
    """Why the cells of `exp` cannot run on its allocation, in one line; None when they can.

    Every cell's batch must divide evenly over the ranks; on GPUs, every cell must fit in
    slurm.gpu_mem_gb per rank. The line says what would fit (see `suggestion`)."""
    s, n = exp.slurm, ranks(exp.slurm)
    for cell in exp.cells:
        batch = cell.config.train.batch_size
        if batch % n:
            return (
                f"cell {cell.label}: batch {batch} does not divide over {n} ranks (slurm.nodes {s.nodes} x "
                f"tasks_per_node {s.tasks_per_node}); choose a batch that is a multiple of {n}, or other ranks"
            )
        if on_gpus(s) and not fits(fp := footprint(cell.config), batch // n, s.gpu_mem_gb):
            return (
                f"batch {batch} at {cell.config.data.size} px needs about "
                f"{device_bytes(fp, batch // n) / GB:.0f} GB per rank with {n} rank{'s' * (n > 1)} "
                f"(slurm.gpu_mem_gb: {s.gpu_mem_gb:g}): {suggestion(fp, batch, s)}"
            )
    return None


def check(exp: Experiment) -> None:
    """Refuse (ValueError, one line) an experiment whose cells cannot run on its allocation."""
    if (why := refusal(exp)) is not None:
        raise ValueError(why)


def suggestion(fp: Footprint, batch: int, slurm: SlurmConfig) -> str:
    """What would fit: the fewest ranks that hold `batch` (a layout of whole nodes of NODE_GPUS GPUs, or
    of the section's GPUs per node when more), or the largest power-of-two batch the current ranks hold."""
    per_node = max(slurm.gpus_per_node, slurm.tasks_per_node, NODE_GPUS)
    largest = fp.largest_batch(step_capacity(slurm.gpu_mem_gb))
    options = []
    if largest >= 1:
        needed = math.ceil(batch / largest)
        layouts = [
            n
            for n in (
                *(2**i for i in range(per_node.bit_length()) if 2**i < per_node),
                *(per_node * k for k in range(1, batch // per_node + 1)),
            )
            if n >= needed
        ]
        n = next((n for n in layouts if batch % n == 0), None)
        if n is not None:
            nodes, tasks = (1, n) if n < per_node else (n // per_node, per_node)
            options.append(f"use nodes: {nodes}, tasks_per_node: {tasks} ({batch // n} per rank)")
        now = ranks(slurm)
        if largest * now < batch:
            options.append(f"batch {now * 2 ** int(math.log2(largest))}")
    return ", or ".join(options) or "it does not fit one GPU even at batch 1 per rank; set a smaller data.size"


def report(exp: Experiment) -> tuple[dict[str, dict[str, str]], str]:
    """For `ablate grid --dry-run`: a column {cell id: GB per rank} and a line with the allocation
    (and the refusal a launch would give)."""
    s, n = exp.slurm, ranks(exp.slurm)
    layout = (
        f"allocation: nodes {s.nodes} x tasks_per_node {s.tasks_per_node} = {n} rank{'s' * (n > 1)}, "
        f"gpus_per_node {s.gpus_per_node}"
    )
    if not on_gpus(s):
        return {}, f"{layout} (no GPU asked for: memory not sized)"
    column = {c.id: f"{device_bytes(footprint(c.config), c.config.train.batch_size // n) / GB:.1f}" for c in exp.cells}
    batches = sorted({c.config.train.batch_size for c in exp.cells})
    per_rank = ", ".join(f"{b} = {b // n} per rank" if b % n == 0 else f"{b} (does not divide)" for b in batches)
    why = refusal(exp)
    return {"GB/rank": column}, (
        f"{layout}, {s.gpu_mem_gb:g} GB each; batch {per_rank}; "
        + (f"a launch would refuse: {why}" if why else "every cell fits")
    )


# ---------------------------------------------------------------- measuring (calibration and its test)


def measure_peak_bytes(cfg: CellConfig, steps: int = 2) -> int:
    """Peak bytes of `steps` training steps of the cell on the CPU, measured in a fresh process.

    The child's peak resident memory (VmHWM, reset just before the steps) over its memory before them,
    plus the weights and the batch that exist then. Large blocks are mapped and unmapped one by one
    (MALLOC_MMAP_THRESHOLD_), so freed memory leaves the resident set at once."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "ablation.sizing", json.dumps(cfg.to_dict()), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measuring failed: {out.stderr.strip().splitlines()[-1:]}")
    return int(out.stdout.split()[-1])


def _resident(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) * 1024  # type: ignore[union-attr]


def _measure_here(cfg: CellConfig, steps: int) -> int:
    import torch

    from .augment.pipeline import TwoViews
    from .training import build_optimisation, generator, initial_method, train_step

    torch.set_num_threads(1)
    model = initial_method(cfg, torch.device("cpu"), 10)
    optimizer, scheduler = build_optimisation(cfg, model, steps)
    views = TwoViews(cfg.augment.views, base=cfg.augment.base, mode=cfg.augment.mode)
    b, s = cfg.train.batch_size, cfg.data.size
    x, y = torch.rand(b, 3, s, s), torch.zeros(b, dtype=torch.long)
    existing = sum(p.numel() * p.element_size() for p in model.parameters()) + x.numel() * x.element_size()
    before = _resident("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set
    for step in range(steps):
        train_step(
            model, model, views, x, y, generator(x.device, 0, step), optimizer, scheduler, cfg, (step + 1, steps)
        )
    return _resident("VmHWM") - before + existing


if __name__ == "__main__":
    print(_measure_here(from_dict(CellConfig, json.loads(sys.argv[1])), int(sys.argv[2])))
