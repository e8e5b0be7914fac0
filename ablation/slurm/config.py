"""The `slurm:` section of an experiment: the resources of each cell's job, one typed, validated object.

Torch-free and submitit-free: an experiment reads it (ablation.grid) without knowing how jobs are submitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import from_dict, opt


@dataclass
class SlurmConfig:
    partition: str | None = opt(None, "partition (none: the cluster's default)")
    nodes: int = opt(
        1,
        "nodes per cell: a DDP cell over nodes x tasks_per_node processes, the global batch split "
        "evenly over them (packs of cells stay on one node)",
        low=1,
        high=1024,
    )
    gpus_per_node: int = opt(1, "GPUs per node of a cell", low=0, high=64)
    tasks_per_node: int = opt(
        1,
        "processes per node of a cell, one per GPU; more than one process in all runs DDP "
        "with gathered negatives and global batch norm",
        low=1,
        high=64,
    )
    gpu_mem_gb: float = opt(
        80.0,
        "memory of one GPU in GB: a launch refuses cells whose estimated peak per rank "
        "exceeds it (`ablate grid --dry-run` shows the estimate)",
        low=1.0,
    )
    cells_per_gpu: int = opt(
        0,
        "cells one job runs at once on each of its GPUs (CPU jobs: in all); 0: automatic, "
        "from the model's cost and the GPU's memory (1 for CPU jobs and DDP cells)",
        low=0,
        high=64,
    )
    gres: str | None = opt(
        None, "generic resources per job, e.g. shard:1 where the cluster shares GPUs as shards (then gpus_per_node: 0)"
    )
    cpus_per_task: int = opt(8, "CPUs per process", low=1, high=1024)
    mem_gb: int | None = opt(None, "memory per cell in GB (none: the partition's default)", low=1)
    timeout_min: int = opt(240, "time limit per job; a cell that hits it checkpoints and requeues", low=1)
    account: str | None = opt(None, "Slurm account")
    qos: str | None = opt(None, "quality of service")
    constraint: str | None = opt(None, "node features, e.g. a100")
    array_parallelism: int = opt(64, "how many cells of one launch run at once", low=1)
    signal_delay_s: int = opt(120, "seconds before the time limit when Slurm sends USR2", low=10)
    max_requeues: int = opt(10, "time-limit requeues before a cell gives up", low=0)
    images_per_s: float | None = opt(
        None, "throughput of one cell (all its ranks together), for --dry-run estimates before any cell ran", low=0.0
    )
    extra: dict | None = opt(None, "extra sbatch parameters, e.g. {exclude: node3}")


def read_slurm(tree: dict) -> SlurmConfig:
    """The section's keys, types and ranges, then how its fields combine; every error names the key."""
    slurm = from_dict(SlurmConfig, tree, "slurm.")
    if slurm.cells_per_gpu > 1 and slurm.tasks_per_node > 1:
        raise ValueError(
            f"slurm.cells_per_gpu: {slurm.cells_per_gpu} cells per GPU need tasks_per_node 1 "
            f"(got {slurm.tasks_per_node}); a DDP cell has its GPUs to itself"
        )
    if slurm.cells_per_gpu > 1 and slurm.nodes > 1:
        raise ValueError(
            f"slurm.cells_per_gpu: {slurm.cells_per_gpu} cells per GPU need nodes 1 (got {slurm.nodes}); "
            f"packs of cells run on one node"
        )
    if slurm.gres and slurm.gpus_per_node:
        raise ValueError(
            f"slurm.gres: '{slurm.gres}' with gpus_per_node {slurm.gpus_per_node}; "
            f"ask for GPUs one way: set gpus_per_node: 0 with gres"
        )
    return slurm
