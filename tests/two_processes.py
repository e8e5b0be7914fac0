"""Two gloo processes against one: the harness of the DDP equality tests (losses, methods).

A test's `worker(rank, init_file, out, *args)` runs in each process (`spawn` starts them): it
`join`s the group, computes on its rank's `shard` of the batch, averages over ranks with
`rank_mean` as DDP does, and ends with `finish`, which saves its results; the test compares the
ranks' results with one process on the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
ROWS = 8  # the batch, split evenly over the ranks


def spawn(worker: Callable, tmp_path: Path, *args, start_method: str = "spawn") -> list:
    """Run `worker` in WORLD processes ("fork": without re-importing torch); what each rank passed
    to `finish`, by rank."""
    out = tmp_path / "dist"
    mp.start_processes(
        worker, args=(str(tmp_path / "init"), str(out), *args), nprocs=WORLD, join=True, start_method=start_method
    )
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


def join(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def shard(rank: int) -> slice:
    return slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)


def rank_mean(tensors: list[torch.Tensor]) -> None:
    """In place, the mean over ranks (what DDP does to gradients)."""
    for t in tensors:
        dist.all_reduce(t)
        t /= WORLD


def finish(rank: int, results: object, out: str) -> None:
    """Save this rank's `results`; the ranks wait for each other, then leave without running torch's C++ static
    destructors: at interpreter exit they sometimes abort ("terminate called without an active
    exception", SIGABRT) after all the work is done, which would fail the test for no reason."""
    torch.save(results, f"{out}.{rank}")
    dist.barrier()
    os._exit(0)


def loss_and_grads(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rows: slice,
    seed: int,
    out_dim: int,
    noise: float | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
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
