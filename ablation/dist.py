"""torch.distributed facts the cell, the losses and the global batch norm need, valid with or without a
process group."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather, all_reduce


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is set on any process (one tiny all-reduce; used to stop all ranks together)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def every_rank(value: float, device: torch.device) -> list[float]:
    """`value` of every process, by rank (one all-gather, in float64: a float32 value comes back exactly)."""
    if not active():
        return [value]
    mine = torch.tensor([value], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world())]
    dist.all_gather(gathered, mine)
    return [float(t) for t in gathered]


def mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (for logging the loss of the global batch)."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, in rank order, so gradients flow back to each owner.

    The backward sums the incoming gradients over ranks. Each rank's input therefore receives the
    gradient of every rank's loss, which DDP's mean over ranks needs. Every rank must pass the same
    shape. Without torch.distributed (or with one process) ``x`` is returned unchanged.
    """
    if not active():
        return x
    return torch.cat(all_gather(x), dim=0)


def sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks, differentiable: the backward sums the gradients of every rank's
    loss (what a global batch statistic needs under DDP). Without a process group: ``x`` itself."""
    if not active():
        return x
    return all_reduce(x)


def barrier() -> None:
    if active():
        dist.barrier()
