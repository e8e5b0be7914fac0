"""Run one cell: SimCLR pretraining, then a linear and a kNN probe of the frozen encoder.

Resumable and bit-exact: every random draw comes from a generator seeded by
(seed, epoch) for the shuffle and (seed, epoch, step) for the augmentations, so a
checkpoint only needs the weights, the optimiser and the position (epoch, step).
An interrupt (preemption signal, Ctrl-C) is honoured at a step boundary: the
checkpoint is written there, and a rerun continues from it.
"""
from __future__ import annotations

import functools
import hashlib
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import dist, store
from .augment import TwoViews
from .config import CellConfig, signature
from .data import (DeviceBatcher, FolderSet, ImageSet, fits_on_device, load_dataset, load_folder, source_views,
                   stream_batcher)
from .losses import contrastive_loss
from .model import SimCLRModel, build_encoder, build_head
from .optim import build_optimizer, scaled_lr, warmup_cosine
from .probe import extract_features, knn_probe, linear_probe
from .progress import Progress


class Preempted(Exception):
    """Raised after the checkpoint is written, when an interrupt was requested."""


@dataclass
class Interrupt:
    """Set `requested` from a signal handler; the training loop stops at the next step boundary."""
    requested: bool = False
    reason: str = "interrupted"

    def request(self, reason: str = "interrupted") -> None:
        self.requested, self.reason = True, reason


@dataclass
class TrainState:
    """Everything a checkpoint holds beyond weights and optimiser."""
    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    losses: list = field(default_factory=list)
    images: int = 0
    train_s: float = 0.0
    wall_s: float = 0.0
    resumed_at: list = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: '{name}' requested but no CUDA device is available; use auto or cpu")
    return device


def generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator whose seed is a stable hash of `keys` (seed, epoch[, step])."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


@functools.lru_cache(maxsize=4)
def _cached_dataset(data_key: tuple) -> tuple[ImageSet, ImageSet]:
    """Data sets stay in memory across the cells of a local grid (they differ in augmentation only)."""
    name, root, size, download, n_train, n_test, seed = data_key
    return load_dataset(name, root, size, download, None, n_train=n_train, n_test=n_test, seed=seed)


def load_data(cfg: CellConfig) -> tuple[ImageSet, ImageSet]:
    d = cfg.data
    if d.name == "folder":
        return load_folder(d)  # resident (ImageSet, or FolderSet at a larger stored size) or streamed
    return _cached_dataset((d.name, d.root, d.size, d.download, d.n_train, d.n_test, d.data_seed))


def build_model(cfg: CellConfig, device: torch.device) -> SimCLRModel:
    """Encoder + head, initialised from the cell's seed (so the random-init baseline is the same net)."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    encoder, dim = build_encoder(m.encoder, cifar_stem=m.cifar_stem, width=m.width)
    head = build_head(m.head, dim, m.head_hidden, m.out_dim, m.head_layers)
    return SimCLRModel(encoder, head).to(device, memory_format=torch.channels_last)


def _autocast(cfg: CellConfig, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _save(path: Path, model, optimizer, scheduler, state: TrainState) -> None:
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "state": vars(state)}
    store.atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def _load(path: Path, model, optimizer, scheduler) -> TrainState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return TrainState(**payload["state"])


def _versions() -> dict:
    import kornia
    import torchvision

    from . import __version__
    return {"ablation": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "kornia": kornia.__version__, "python": platform.python_version()}


def evaluate(cfg: CellConfig, encoder: torch.nn.Module, train: ImageSet, test: ImageSet,
             device: torch.device) -> dict:
    """Linear (top-1, top-5) and kNN probes on features computed once from un-augmented images."""
    bs = cfg.eval.batch_size
    f_train = extract_features(encoder, train.images, bs, device)
    f_test = extract_features(encoder, test.images, bs, device)
    n = len(train.classes)
    linear = linear_probe(f_train, train.labels, f_test, test.labels, n)
    knn = knn_probe(f_train, train.labels, f_test, test.labels, n, k=cfg.eval.knn_k, t=cfg.eval.knn_t)
    return {"linear_top1": linear["top1"], "linear_top5": linear["top5"], "knn_top1": knn}


def _finish(out: Path, cfg: CellConfig, status: str, state: TrainState, device: torch.device,
            metrics: dict, reason: str | None = None) -> dict:
    identity = store.read_json(out / "cell.json") or {"id": signature(cfg)}
    result = {**identity, "status": status, "reason": reason, "metrics": metrics,
              "epochs_done": state.epoch, "resumed_at": state.resumed_at, "losses": state.losses,
              "wall_time_s": round(state.wall_s, 3), "train_time_s": round(state.train_s, 3),
              "images_per_s": round(state.images / state.train_s, 1) if state.train_s else None,
              "device": str(device), "seed": cfg.train.seed, "versions": _versions(),
              "config": cfg.to_dict()}
    if dist.is_main():
        store.write_json(store.result_path(out), result)
    return result


def run_cell(cfg: CellConfig, out: Path, interrupt: Interrupt | None = None, show_progress: bool = True) -> dict:
    """Train and evaluate one cell into `out`; returns the result. A finished `out` is not re-run.

    Any error is recorded as a failed result (with the reason) before it propagates, so a
    grid sees the failure; an interrupt leaves a checkpoint and no result.
    """
    out = Path(out)
    done = store.read_result(out)
    if done and done.get("status") == store.FINISHED:
        return done
    start = time.monotonic()
    try:
        return _run(cfg, out, interrupt or Interrupt(), show_progress, start)
    except Preempted:
        raise
    except Exception as err:
        _finish(out, cfg, store.FAILED, TrainState(wall_s=time.monotonic() - start), torch.device("cpu"), {},
                reason=f"{type(err).__name__}: {err}")
        raise


def train_step(net: torch.nn.Module, views: TwoViews, x: torch.Tensor, g: torch.Generator, optimizer, scheduler,
               cfg: CellConfig) -> torch.Tensor:
    """One SimCLR step: two views, one forward pass over both, contrastive loss, update. Returns the loss."""
    v1, v2 = views(x, g)
    with _autocast(cfg, x.device):
        z = net(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))
    z1, z2 = z.float().chunk(2)
    loss = contrastive_loss(cfg.loss.name, z1, z2, cfg.loss.temperature, cfg.loss.normalize, cfg.loss.margin)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def _batcher(cfg: CellConfig, train: ImageSet, device: torch.device) -> DeviceBatcher:
    """The training set on the device when it fits (airbench-style), else batches moved per step;
    a streamed folder's loader."""
    if isinstance(train, FolderSet) and train.stored is None:
        return stream_batcher(cfg.data, cfg.augment, cfg.train.batch_size, train, device, (dist.rank(), dist.world()))
    images = train.stored if isinstance(train, FolderSet) else train.images
    resident = cfg.data.resident == "always" or (
        cfg.data.resident == "auto" and fits_on_device(images.numel(), device))
    images = images.to(device) if resident else images
    return DeviceBatcher(images, train.labels, cfg.train.batch_size, drop_last=True,
                         shard=(dist.rank(), dist.world()))


def build_optimisation(cfg: CellConfig, model: torch.nn.Module, steps: int):
    """Optimiser with the scaled learning rate, and its warmup + cosine schedule over the whole run."""
    lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
    optimizer = build_optimizer(model, cfg.optim.name, lr, cfg.optim.weight_decay, cfg.optim.momentum)
    total = steps * cfg.train.epochs
    scheduler = warmup_cosine(optimizer, min(round(cfg.optim.warmup_epochs * steps), total - 1), total)
    return optimizer, scheduler


def _probe_all(cfg: CellConfig, model: SimCLRModel, train: ImageSet, test: ImageSet, device: torch.device,
               final_loss: float) -> dict:
    metrics = {**evaluate(cfg, model.encoder, train, test, device), "final_loss": final_loss,
               "random_init_top1": None}
    if cfg.eval.random_init:
        baseline = build_model(cfg, device).encoder
        metrics["random_init_top1"] = evaluate(cfg, baseline, train, test, device)["linear_top1"]
    return metrics


def _run(cfg: CellConfig, out: Path, interrupt: Interrupt, show_progress: bool, start: float) -> dict:
    if dist.is_main():
        store.write_yaml(out / "config.yaml", cfg.to_dict())
    device = resolve_device(cfg.train.device)
    train, test = load_data(cfg)
    model = build_model(cfg, device)
    batcher = _batcher(cfg, train, device)
    steps, epochs, seed = len(batcher), cfg.train.epochs, cfg.train.seed
    optimizer, scheduler = build_optimisation(cfg, model, steps)
    ckpt = store.checkpoint_path(out)
    state = TrainState()
    if ckpt.exists():
        state = _load(ckpt, model, optimizer, scheduler)
        state.resumed_at.append({"epoch": state.epoch, "step": state.step})
    prior_wall = state.wall_s
    net = DistributedDataParallel(model) if dist.active() else model
    views = (source_views(cfg.data, cfg.augment, train) if isinstance(train, FolderSet)
             else TwoViews(cfg.augment.views, base=cfg.augment.base, mode=cfg.augment.mode))
    rank_key = [dist.rank()] if dist.world() > 1 else []  # each rank draws its own augmentations
    bar = Progress(steps * epochs, "pretrain") if show_progress and dist.is_main() else None

    def save() -> None:
        state.wall_s = prior_wall + time.monotonic() - start
        if dist.is_main():
            _save(ckpt, model, optimizer, scheduler, state)

    while state.epoch < epochs:
        epoch, t0 = state.epoch, time.monotonic()
        loss_sum = torch.tensor(state.loss_sum, device=device)
        net.train()
        for x, _ in batcher.epoch(generator(batcher.device, seed, epoch), start=state.step):
            x = x.to(device, non_blocking=True)
            loss_sum += train_step(net, views, x, generator(device, seed, epoch, state.step, *rank_key), optimizer,
                                   scheduler, cfg)
            state.step += 1
            state.images += x.shape[0] * dist.world()
            if dist.any_rank(interrupt.requested, device):
                state.loss_sum, state.train_s = float(loss_sum), state.train_s + time.monotonic() - t0
                save()
                raise Preempted(f"{interrupt.reason} at epoch {epoch} step {state.step}; checkpoint written")
        state.train_s += time.monotonic() - t0
        epoch_loss = float(dist.mean(loss_sum)) / steps
        state.epoch, state.step, state.loss_sum = epoch + 1, 0, 0.0
        state.losses.append(epoch_loss)
        if not math.isfinite(epoch_loss):
            state.wall_s = prior_wall + time.monotonic() - start
            return _finish(out, cfg, store.FAILED, state, device, {"final_loss": epoch_loss},
                           reason=f"non-finite loss ({epoch_loss}) in epoch {epoch + 1}")
        if bar:
            bar.update(state.epoch * steps, epoch=f"{state.epoch}/{epochs}", loss=f"{epoch_loss:.4f}",
                       img_s=f"{state.images / max(state.train_s, 1e-9):.0f}")
        if state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == epochs:
            save()

    metrics = _probe_all(cfg, model, train, test, device, state.losses[-1]) if dist.is_main() else {}
    dist.barrier()
    state.wall_s = prior_wall + time.monotonic() - start
    return _finish(out, cfg, store.FINISHED, state, device, metrics)
