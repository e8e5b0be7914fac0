"""Per-epoch metrics of a training cell: rows in its metrics.jsonl and the optional back-ends
(TensorBoard, Weights & Biases; see ablation/loggers.py).

Nothing here runs per step. The training loop sums its loss on the device as before and calls
`EpochLog.epoch` once per epoch, after its own read of that sum; the embedding measurement and
the optional probes then cost one more device read per epoch. A resumed run first drops the rows
after its checkpoint's epoch and then writes them again, so the file holds exactly one row per
trained epoch whatever interrupted it. The measurements leave the weights, the BatchNorm running
statistics and every random stream of training untouched, so a resumed cell still equals an
uninterrupted one.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .loggers import Loggers
from .methods import Method
from .names import ALIGN, EPOCH, IMAGES_PER_S, LOSS, LR, POS_SIM, STEP, TIME, UNIFORM, WALL_S

if TYPE_CHECKING:
    from .cell import TrainState

# Images of the fixed batch whose two views measure the embeddings after every epoch: the same
# images and the same augmentation draws each epoch, so the curve follows the model only.
EMBED_IMAGES = 128
EMBED_SEED = 20_200_213


class Batcher(Protocol):
    """What the log needs of a cell's batcher (DeviceBatcher, StreamBatcher)."""

    def sample(self, n: int) -> torch.Tensor:
        """n training images spread over the set, uint8, the same at every call."""
        ...


@torch.no_grad()
def embedding_stats(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Of l2-normalised projections of two views (rows pair up), as 0-d tensors on their device:
    pos_sim, the mean cosine similarity of positive pairs; align, their mean squared distance;
    uniform, log E exp(-2 |z - z'|^2) over pairs of images of one view, averaged over both views
    (Wang & Isola 2020, alpha = t = 2). Collapse shows as uniform -> 0, a trivial task as pos_sim -> 1."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    uniform = torch.stack([torch.pdist(z).square().mul(-2).exp().mean().log() for z in (z1, z2)]).mean()
    return {POS_SIM: (z1 * z2).sum(1).mean(), ALIGN: (z1 - z2).square().sum(1).mean(), UNIFORM: uniform}


def _number(value: float) -> float | None:
    """A JSON-safe float: non-finite values (a diverged epoch) become null."""
    return value if math.isfinite(value) else None


class EpochLog:
    """metrics.jsonl rows (epoch, step, loss, lr, images_per_s, wall_s, time, pos_sim, align, uniform,
    and every `log_every` epochs the probes' linear_top1, linear_top5 and knn_top1) of one cell.

    `model` is the cell's method: the embedding statistics are of its projections (`project`); a
    method without one (supervised) has no pos_sim, align and uniform columns. `source` (the cell's
    batcher) gives the fixed batch in the form `views` takes: resident images, or a streamed folder's
    images with their source crops (see the batchers' `sample`). `probe` evaluates the frozen
    encoder (the cell's final evaluation, run early); `state` is the cell's TrainState, read for its
    position, images and training seconds.

    Under DDP every rank keeps one and calls `epoch`: the embedding forward runs in training mode,
    where global batch norm is a collective that every rank must join (one rank alone waits
    forever). Only the rank given `loggers` (the main one) probes and writes; the others measure only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        views: Callable,
        source: Batcher,
        steps: int,
        log_every: int,
        state: TrainState,
        probe: Callable[[], dict],
        loggers: Loggers | None,
    ):
        self.model, self.views, self.probe, self.loggers = model, views, probe, loggers
        self.steps, self.log_every = steps, log_every
        device = next(model.parameters()).device
        self.measures = type(model).project is not Method.project  # else no projection: nothing to run
        self.batch = source.sample(EMBED_IMAGES).to(device).float().div_(255) if self.measures else None
        self.generator = torch.Generator(device=device)
        self.images, self.train_s = state.images, state.train_s
        if loggers is not None:  # closed by `finish`, or when the run ends otherwise (interrupted, failed)
            self._closer = weakref.finalize(self, loggers.close)

    @torch.no_grad()
    def measure(self) -> dict[str, float | None]:
        """Embedding statistics of the fixed batch's two views as the loss sees them (training mode,
        batch statistics); the BatchNorm running statistics that this forward moves are put back.
        Empty for a method without projections."""
        if not self.measures:
            return {}
        saved = [b.clone() for b in self.model.buffers()]
        v1, v2 = self.views(self.batch, self.generator.manual_seed(EMBED_SEED))
        z = self.model.project(torch.cat([v1, v2]))
        for buffer, value in zip(self.model.buffers(), saved):
            buffer.copy_(value)
        z1, z2 = z.chunk(2)
        stats = embedding_stats(z1, z2)
        return dict(zip(stats, map(_number, torch.stack(list(stats.values())).tolist())))  # one device read

    def epoch(self, state: TrainState, loss: float, lr: float, wall_s: float) -> dict:
        """Log the epoch that just ended (state.epoch epochs done); returns the row written (empty
        where this rank does not write)."""
        embedding = self.measure()
        if self.loggers is None:
            return {}
        images, seconds = state.images - self.images, state.train_s - self.train_s
        self.images, self.train_s = state.images, state.train_s
        parts = {
            "train": {
                LOSS: _number(loss),
                LR: _number(lr),
                IMAGES_PER_S: round(images / seconds, 1) if seconds > 0 else None,
            },
            "embedding": embedding,
            "probe": (
                {k: v for k, v in self.probe().items() if isinstance(v, float)}
                if self.log_every and state.epoch % self.log_every == 0
                else {}
            ),
        }
        row = {
            EPOCH: state.epoch,
            STEP: state.epoch * self.steps,
            WALL_S: round(wall_s, 3),
            TIME: round(time.time(), 3),
            **parts["train"],
            **parts["embedding"],
            **parts["probe"],
        }
        self.loggers.epoch(row, parts)
        return row

    def close(self) -> None:
        """The run stops without a result (interrupted): the back-ends close what they hold."""
        if self.loggers is not None:
            self.loggers.close()

    def finish(self, result: dict) -> dict:
        """The cell ended with `result`: the back-ends take its final metrics and close; returns it."""
        return self.loggers.finish(result) if self.loggers is not None else result
