"""GPU-resident batching (as in airbench): the uint8 set lives on the device, so an epoch costs one
randperm and an index + convert per batch, with no host-to-device copies or loader workers. A set
too big for the device stays on the host: each batch is gathered there as uint8 into pinned memory,
copied without blocking, and converted on the device (a quarter of the bytes of floats)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

FREE_MARGIN = 0.9  # of a GPU's free memory a resident set and the step may fill: fragmentation, estimate error


def fits_on_device(n_bytes: int, device: torch.device | str, step_bytes: Callable[[], float]) -> bool:
    """Whether a resident set of `n_bytes` should live on `device`.

    CPU (and other non-CUDA devices): always. CUDA: when the set and the training step beside it fit
    in the free memory (`leaves_room`); `step_bytes()` (sizing.step_bytes: the activations autograd
    keeps, the optimiser's state, the views) is counted only here, since counting costs seconds.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return leaves_room(n_bytes, step_bytes(), free)


def leaves_room(n_bytes: float, step_bytes: float, free: float) -> bool:
    """A set of `n_bytes` beside a step of `step_bytes` within FREE_MARGIN of `free` bytes. A fixed share
    of the free memory would not do: ImageNet-100's 25 GB set fits in half of an 80 GB GPU, but not
    beside a ResNet-50 step of 1,024 images (about 80 GB of activations and state by sizing.step_bytes)."""
    return n_bytes + step_bytes <= FREE_MARGIN * free


def spread(total: int, n: int) -> Tensor:
    """min(n, total) indices spread evenly over range(total): a measurement batch drawn from the whole
    set, which covers every class of a folder (folders list their images class by class)."""
    k = min(n, total)
    return torch.arange(k) * total // max(k, 1)


class DeviceBatcher:
    """Float batches in [0, 1] (B,3,H,W) with labels on device `to` (default: the images' device),
    from uint8 images on their device.

    `shard=(rank, world)`: every rank draws the same permutation (same generator seed) and takes
    its contiguous slice of each global batch, so the ranks together see exactly one global batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        drop_last: bool = True,
        shard: tuple[int, int] = (0, 1),
        to: torch.device | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N,C,H,W); got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},); got {tuple(labels.shape)}")
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world; got {shard}")
        if batch_size < world or (drop_last and batch_size > len(images)):
            raise ValueError(
                f"batch_size {batch_size} must be >= world size {world} and, with drop_last, "
                f"<= the {len(images)} images"
            )
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size, self.drop_last, self.shard = batch_size, drop_last, shard
        self.to = images.device if to is None else torch.device(to)

    @property
    def device(self) -> torch.device:
        """Where the images live (and the epoch's generator must)."""
        return self.images.device

    def sample(self, n: int) -> Tensor:
        """n images spread over the set (uint8, as stored), the same on every rank: a fixed batch for
        measurements."""
        return self.images[spread(len(self.images), n).to(self.images.device)]

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass in a fresh random order, from step `start` on (resume: skip `start` batches of
        the same permutation). The permutation is drawn now, not at the first `next`."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}] (steps per epoch); got {start}")
        device = self.images.device
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but the images are on {device}; "
                f"use torch.Generator(device={str(device)!r})"
            )
        order = torch.randperm(len(self.images), generator=generator, device=device)
        return self._batches(order, start)

    def _batches(self, order: Tensor, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        rank, world = self.shard
        for step in range(start, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size].tensor_split(world)[rank]
            x, y = self._moved(self.images, idx), self._moved(self.labels, idx)
            yield x.float().div_(255), y

    def _moved(self, source: Tensor, idx: Tensor) -> Tensor:
        """source[idx] on the batches' device: from the host to a GPU through pinned memory, without
        blocking (a copy from pageable memory blocks the host whatever non_blocking says)."""
        if source.device == self.to:
            return source[idx]
        pinned = self.to.type == "cuda"
        out = torch.empty((len(idx), *source.shape[1:]), dtype=source.dtype, pin_memory=pinned)
        return torch.index_select(source, 0, idx, out=out).to(self.to, non_blocking=pinned)
