"""Two gloo processes against one: the harness of the DDP equality tests (losses, methods).

A test's `worker(rank, init_file, out)` runs in each process (`spawn` starts them): it `join`s the
group, computes on its rank's `shard` of the batch, averages over ranks with `rank_mean` as DDP
does, and ends with `finish`, which saves rank 0's results; the test compares them with one process
on the whole batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
ROWS = 8  # the batch, split evenly over the ranks


def spawn(worker: Callable, tmp_path: Path) -> dict:
    """Run `worker` in WORLD processes; what rank 0 passed to `finish`."""
    out = tmp_path / "dist.pt"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    return torch.load(out)


def join(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def shard(rank: int) -> slice:
    return slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)


def rank_mean(tensors: list[torch.Tensor]) -> None:
    """In place, the mean over ranks (what DDP does to gradients)."""
    for t in tensors:
        dist.all_reduce(t)
        t /= WORLD


def finish(rank: int, results: dict, out: str) -> None:
    """Rank 0 saves `results`; both ranks wait for it, then leave without running torch's C++ static
    destructors: at interpreter exit they sometimes abort ("terminate called without an active
    exception", SIGABRT) after all the work is done, which would fail the test for no reason."""
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    os._exit(0)


def loss_and_grads(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: slice, seed: int,
                   out_dim: int, noise: float | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`loss` of a tiny float64 projection of the `rows` of a fixed ROWS-row batch of two views, and
    the projection's gradients. The second view is the first plus `noise` x Gaussian noise, or
    independent of it when `noise` is None. The same in every process for the same `seed`."""
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(5, out_dim, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_dim, 5, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(out_dim, generator=g, dtype=torch.float64))
    x1 = torch.randn(ROWS, 5, generator=g, dtype=torch.float64)
    other = torch.randn(ROWS, 5, generator=g, dtype=torch.float64)
    x2 = other if noise is None else x1 + noise * other
    value = loss(layer(x1[rows]), layer(x2[rows]))
    value.backward()
    return value.detach(), [p.grad for p in layer.parameters()]
