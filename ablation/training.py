"""A cell's training, assembled once from its config: setup, then the step, then the batches of each epoch.

The shape of torchtune's recipes. `Training.setup` builds what a run trains with (the method on its
device, its optimiser and schedule, the batcher, the views, the online head, the compiled network);
`Training.step` is one training step with the run's generator keys; `Training.epoch` gives an epoch's
batches in the run's order. The cell (ablation.cell) wraps its life cycle around these (lock,
checkpoint and resume, interrupts, logs, evaluation), and benchmarks/train_step.py and
benchmarks/device_check.py time the same `step` on the same setup, so their figures are a cell's.

Every random draw comes from a generator seeded by (seed, epoch) for the shuffle and (seed, epoch,
step[, rank]) for the augmentations, so a resumed run replays the same batches and views.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from . import accel, dist, sizing
from .augment import TwoViews
from .config import CellConfig
from .data import FolderSet, ImageSet, source_views
from .data.batcher import DeviceBatcher
from .data.loading import training_batcher
from .data.source_crop import SourceViews
from .data.stream import StreamBatcher
from .methods import Method, build_method
from .model import global_batch_norm
from .names import LINEAR_PROTOCOLS, ONLINE
from .optim import build_optimizer, scaled_lr, warmup_cosine
from .probe import OnlineHead, capture_features
from .seeding import stable_seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: '{name}' requested but no CUDA device is available; use auto or cpu")
    return device


def generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator whose seed is a stable hash of `keys` (seed, epoch[, step])."""
    return torch.Generator(device=device).manual_seed(stable_seed(*keys))


def protocols(cfg: CellConfig) -> tuple[str, ...]:
    """The linear protocols a cell scores: its own (eval.linear, the one behind linear_top1) first, then,
    with eval.compare, the others. The online one trains alongside pretraining, so the setup reads them."""
    own = cfg.eval.linear
    return (own, *[p for p in LINEAR_PROTOCOLS if p != own]) if cfg.eval.compare else (own,)


def initial_method(cfg: CellConfig, device: torch.device, n_classes: int) -> Method:
    """The cell's method (encoder + its heads) before training, initialised from the cell's seed (so the
    random-init baseline is the same encoder)."""
    torch.manual_seed(cfg.train.seed)
    return build_method(cfg, n_classes).to(device, memory_format=torch.channels_last)


def build_optimisation(
    cfg: CellConfig, model: Method, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Optimiser with the scaled learning rate, and its warmup + cosine schedule over the whole run."""
    lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
    optimizer = build_optimizer(
        model, cfg.optim.name, lr, cfg.optim.weight_decay, cfg.optim.momentum, model.bias_lr_scale()
    )
    total = steps * cfg.train.epochs
    scheduler = warmup_cosine(optimizer, min(round(cfg.optim.warmup_epochs * steps), total - 1), total)
    return optimizer, scheduler


def train_step(
    net: torch.nn.Module,
    method: Method,
    views: TwoViews | SourceViews,
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: CellConfig,
    progress: tuple[int, int],
) -> torch.Tensor:
    """One step of the cell's method: its views of the batch, its networks in one forward pass (`net`:
    the method as DDP and torch.compile wrap it), its loss, the update, then the method's own update
    at `progress` = (steps done, total steps). Returns the loss as a tensor on the device: nothing
    here waits for the device."""
    precision = cfg.train.precision
    inputs = tuple(accel.model_input(v, precision, x.device) for v in method.views(views, x, g))
    with accel.autocast(precision, x.device):
        outputs = net(inputs)
    loss = method.loss(outputs, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    method.update(*progress)
    return loss.detach()


def _views(cfg: CellConfig, train: ImageSet | FolderSet) -> TwoViews | SourceViews:
    """The two views of a batch: on the device from resident images, or from crops taken at the source."""
    if isinstance(train, FolderSet):
        return source_views(cfg.data, cfg.augment, train)
    return TwoViews(cfg.augment.views, base=cfg.augment.base, mode=cfg.augment.mode)


@dataclass
class Training:
    """What a run trains with (see `setup`); `method` is the module a checkpoint saves, `net` the one a
    step runs (DDP and torch.compile around it)."""

    cfg: CellConfig
    device: torch.device
    method: Method
    batcher: DeviceBatcher | StreamBatcher
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    online: OnlineHead | None
    net: accel.CompiledStep
    views: TwoViews | SourceViews
    seen: list[Tensor]  # the encoder's features of the step's views (for the online head)

    @classmethod
    def setup(cls, cfg: CellConfig, train: ImageSet | FolderSet, device: torch.device) -> Training:
        """The run of `cfg` on the training split `train`: the method (global batch norm under DDP with
        model.sync_bn, before the optimiser sees its parameters), the batcher, the optimiser, the online
        head when the cell scores protocol online, the network a step runs, and the views."""
        method = initial_method(cfg, device, len(train.classes))
        if dist.active() and cfg.model.sync_bn:  # every network of the method (a target too)
            method = global_batch_norm(method)
        rank_batch = -(-cfg.train.batch_size // dist.world())  # the largest share (the first ranks' when uneven)
        batcher = training_batcher(
            cfg, train, device, (dist.rank(), dist.world()), lambda: sizing.step_bytes(cfg, rank_batch)
        )
        optimizer, scheduler = build_optimisation(cfg, method, len(batcher))
        online = (
            OnlineHead(method.dim, len(train.classes), cfg.train.batch_size, len(batcher) * cfg.train.epochs, device)
            if ONLINE in protocols(cfg)
            else None
        )
        seen = capture_features(method.encoder) if online else []
        net = accel.CompiledStep(
            method,
            DistributedDataParallel(method) if dist.active() else method,
            accel.uses_compile(cfg.train.compile, device),
        )
        return cls(cfg, device, method, batcher, optimizer, scheduler, online, net, _views(cfg, train), seen)

    @property
    def steps(self) -> int:
        """Steps per epoch."""
        return len(self.batcher)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Tensor, Tensor]]:
        """(step, x, y) of `epoch` from step `start` on (a resumed epoch skips the steps it did), on the
        device, in the order of the (seed, epoch) shuffle; the method in training mode (a probe between
        epochs leaves it in eval mode)."""
        self.method.train()
        shuffle = generator(self.batcher.device, self.cfg.train.seed, epoch)
        for step, (x, y) in enumerate(self.batcher.epoch(shuffle, start=start), start):
            yield step, x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def stepper(self) -> Callable[[], Tensor]:
        """A function whose every call is the run's next `step` (from epoch 0 step 0, and on past the last
        epoch): what a benchmark times."""
        batches = ((epoch, *batch) for epoch in itertools.count() for batch in self.epoch(epoch))

        def next_step() -> Tensor:
            epoch, step, x, y = next(batches)
            return self.step(x, y, epoch, step)

        return next_step

    def step(self, x: Tensor, y: Tensor, epoch: int, step: int) -> Tensor:
        """Step `step` of `epoch` on the batch (x, y): the method's step on views drawn from the
        generator of (seed, epoch, step[, rank]) (each rank draws its own), then the online head's on
        the features the step's views gave. The generator is made inside the compiled call: an eager
        retry after a failed compilation draws the same views. Returns the loss on the device."""
        total = self.steps * self.cfg.train.epochs
        progress = (min(epoch * self.steps + step + 1, total), total)  # a benchmark past the end stays there
        key = (self.cfg.train.seed, epoch, step, *([dist.rank()] if dist.world() > 1 else []))

        def run(net: torch.nn.Module) -> Tensor:
            self.seen.clear()  # features of anything since the last step (an embedding measurement, a failed compile)
            loss = train_step(
                net,
                self.method,
                self.views,
                x,
                y,
                generator(self.device, *key),
                self.optimizer,
                self.scheduler,
                self.cfg,
                progress,
            )
            if self.online:
                self.online.step(torch.cat(self.seen), y)
            return loss

        return self.net.run(run)
