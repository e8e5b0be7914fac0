"""Run one cell: pretraining with the cell's method, then a linear and a kNN probe of the frozen encoder.

The training itself (setup, step, an epoch's batches) is ablation.training's; this module is the cell's
life cycle around it. Resumable and bit-exact: every random draw comes from a generator seeded by
(seed, epoch) for the shuffle and (seed, epoch, step) for the augmentations, so a
checkpoint only needs the weights (the method's heads and target networks included), the optimiser
and the position (epoch, step).
An interrupt (preemption signal, Ctrl-C) is honoured at a step boundary: the
checkpoint is written there, and a rerun continues from it. One process at a time writes a
cell (a lock in its folder): a rerun started while an older run is still ending waits for it.
A checkpoint that cannot be loaded ends the run with status `corrupt`, naming the file.
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import dist, store
from .augment import parse_spec
from .config import CellConfig, from_dict, read_yaml
from .data import ImageSet, load_data
from .identity import legacy_signature, settings, signature
from .loggers import open_loggers
from .methods import Method
from .metrics_log import EpochLog
from .names import (
    CORRUPT,
    EPOCHS_DONE,
    EVAL_RECORD,
    FAILED,
    FINAL_LOSS,
    FINISHED,
    IMAGES_PER_S,
    IMAGES_SEEN,
    KNN_TOP1,
    LBFGS,
    LINEAR_PROTOCOL,
    LINEAR_TOP1,
    LINEAR_TOP5,
    ONLINE,
    PER_CLASS,
    RANDOM_INIT_TOP1,
    SGD,
    WALL_TIME_S,
    protocol_metric,
)
from .probe import OnlineHead, extract_features, knn_correct, linear_probe, sgd_probe
from .progress import Progress
from .training import Training, initial_method, protocols, resolve_device

INTERRUPT_POLL_STEPS = 8  # under DDP, steps between two checks of the ranks' interrupt flags
SGD_AUGMENT = "crop"  # the sgd protocol's views of the training images: Appendix B.6's random crop + flip


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
    loss_sum: float | list = 0.0  # the epoch's losses so far; by rank (a list) when a stop mid-epoch saved them
    losses: list = field(default_factory=list)
    images: int = 0
    train_s: float = 0.0
    wall_s: float = 0.0
    epoch_s: list = field(default_factory=list)
    resumed_at: list = field(default_factory=list)


def _save(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    online: OnlineHead | None,
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": vars(state),
        **({"online": online.checkpoint()} if online else {}),
    }
    store.atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def _load(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    online: OnlineHead | None,
) -> TrainState:
    """The training state of a checkpoint; `store.Corrupt` when it cannot be read or does not fit."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if online:
            online.restore(payload["online"])
        return TrainState(**payload["state"])
    except Exception as err:  # noqa: BLE001 - truncated, foreign or from another config: never silently restart
        raise store.Corrupt(path, f"cannot be loaded ({type(err).__name__}: {err})") from None


def _versions() -> dict:
    import kornia
    import torchvision

    from . import __version__

    return {
        "ablation": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "kornia": kornia.__version__,
        "python": platform.python_version(),
    }


def random_init_protocol(cfg: CellConfig) -> str:
    """The protocol of the random-init floor: the cell's own, except online (a head trained alongside
    pretraining has no counterpart for an encoder that never trained), which takes lbfgs."""
    return LBFGS if cfg.eval.linear == ONLINE else cfg.eval.linear


def sgd_epochs(cfg: CellConfig) -> int:
    """eval.sgd_epochs, or Appendix B.6's: 100 on CIFAR, else 90."""
    return cfg.eval.sgd_epochs or (100 if cfg.data.name in ("cifar10", "cifar100") else 90)


def eval_record(cfg: CellConfig) -> dict:
    """result.json's account of how the linear metrics were measured."""
    used = protocols(cfg) + ((random_init_protocol(cfg),) if cfg.eval.random_init else ())
    return {
        LINEAR_PROTOCOL: cfg.eval.linear,
        "compared": list(protocols(cfg)[1:]),
        "random_init_protocol": random_init_protocol(cfg) if cfg.eval.random_init else None,
        **({"sgd_epochs": sgd_epochs(cfg), "sgd_batch": cfg.eval.sgd_batch} if SGD in used else {}),
    }


def _linear(
    protocol: str,
    cfg: CellConfig,
    encoder: torch.nn.Module,
    train: ImageSet,
    test: ImageSet,
    features: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    online: OnlineHead | None,
) -> dict:
    """One protocol's scores of the frozen encoder (probe.scores)."""
    (f_train, f_test), n = features, len(train.classes)
    if protocol == LBFGS:
        return linear_probe(f_train, train.labels, f_test, test.labels, n)
    if protocol == SGD:
        return sgd_probe(
            encoder,
            train.images,
            train.labels,
            test.images,
            test.labels,
            n,
            parse_spec(SGD_AUGMENT),
            epochs=sgd_epochs(cfg),
            batch_size=cfg.eval.sgd_batch,
            seed=cfg.train.seed,
            extract_batch=cfg.eval.batch_size,
            device=device,
        )
    if online is None:
        raise ValueError("eval.linear=online scores a head trained alongside pretraining; none was trained")
    return online.evaluate(f_test, test.labels)


def evaluate(
    cfg: CellConfig,
    encoder: torch.nn.Module,
    train: ImageSet,
    test: ImageSet,
    device: torch.device,
    online: OnlineHead | None = None,
    only: tuple[str, ...] = (),
) -> tuple[dict, dict]:
    """The cell's metrics and per-test-image correctness ({probe: bool vector}): its linear protocols
    (``only`` these, when given) and the kNN probe, on float32 features of un-augmented images computed once."""
    bs = cfg.eval.batch_size
    features = extract_features(encoder, train.images, bs, device), extract_features(encoder, test.images, bs, device)
    chosen = only or protocols(cfg)
    linear = {p: _linear(p, cfg, encoder, train, test, features, device, online) for p in chosen}
    own = linear[chosen[0]]
    f_train, f_test = features
    knn = knn_correct(
        f_train, train.labels, f_test, test.labels, len(train.classes), k=cfg.eval.knn_k, t=cfg.eval.knn_t
    )
    metrics = {
        LINEAR_TOP1: own["top1"],
        LINEAR_TOP5: own["top5"],
        KNN_TOP1: knn.float().mean().item(),
        PER_CLASS: dict(zip(test.classes, own["per_class"])),
    }
    correct = {"linear": own["correct"], "knn": knn}
    if len(chosen) > 1:
        metrics |= {protocol_metric(p): r["top1"] for p, r in linear.items()}
        correct |= {protocol_metric(p): r["correct"] for p, r in linear.items()}
    return metrics, correct


def _identity(out: Path, cfg: CellConfig) -> dict:
    """cell.json when the launcher wrote one (and it reads), else the id alone."""
    with contextlib.suppress(store.Corrupt):
        return store.read_record(out / store.CELL) or {"id": signature(cfg)}
    return {"id": signature(cfg)}


def _finish(
    out: Path,
    cfg: CellConfig,
    status: str,
    state: TrainState,
    device: torch.device,
    metrics: dict,
    reason: str | None = None,
    files: tuple[str, ...] = (),
) -> dict:
    result = {
        **_identity(out, cfg),
        "status": status,
        "reason": reason,
        "metrics": metrics,
        EVAL_RECORD: eval_record(cfg),
        EPOCHS_DONE: state.epoch,
        IMAGES_SEEN: state.images,
        "resumed_at": state.resumed_at,
        "losses": state.losses,
        WALL_TIME_S: round(state.wall_s, 3),
        "train_time_s": round(state.train_s, 3),
        IMAGES_PER_S: round(state.images / state.train_s, 1) if state.train_s else None,
        "epoch_s": state.epoch_s,
        "device": str(device),
        "seed": cfg.train.seed,
        "versions": _versions(),
        "config": cfg.to_dict(),
        **({"files": list(files)} if files else {}),
    }
    if dist.is_main():
        store.write_json(out / store.RESULT, result)
    return result


def _one_writer(out: Path) -> contextlib.AbstractContextManager[store.Lock | None]:
    """The cell's lock (the main process holds it; the other ranks of a DDP run only follow it)."""
    if not dist.is_main():
        return contextlib.nullcontext()
    return store.locked(
        out / store.CELL_LOCK,
        waiting=lambda holder: print(
            f"waiting for another run of {out} to end ({holder})", file=sys.stderr, flush=True
        ),
    )


# The files of a cell's run that `replace` moves aside when a folder holds another cell.
RUN_FILES = (store.RESULT, store.CHECKPOINT, store.CONFIG, store.METRICS_LOG, store.CELL, store.JOB, store.TENSORBOARD)


def _held_cell(out: Path, cfg: CellConfig, replace: bool) -> None:
    """Refuse a folder that holds another cell (its config.yaml has another id): resuming its checkpoint
    or showing its result under this config would be wrong. With `replace`, its files go to attempts/."""
    if not (out / store.CONFIG).exists():
        return
    try:
        old = from_dict(CellConfig, read_yaml(out / store.CONFIG))
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{out} holds a cell whose {store.CONFIG} cannot be read ({err}); "
            f"use another folder, or --replace to move its files aside"
        ) from None
    if signature(old) in (signature(cfg), legacy_signature(cfg)):  # a folder made before fingerprints: its old id
        return
    if replace:
        store.retire(out, RUN_FILES)
        return
    before, now = settings(old), settings(cfg)
    keys = [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
    raise ValueError(
        f"{out} holds another cell (id {signature(old)}; this config's is {signature(cfg)}): "
        f"differing keys: {', '.join(keys)}; use another folder, or --replace to move its files "
        f"to {out / store.ATTEMPTS} and start afresh"
    )


def run_cell(
    cfg: CellConfig, out: Path, interrupt: Interrupt | None = None, show_progress: bool = True, replace: bool = False
) -> dict:
    """Train and evaluate one cell into `out`; returns the result. A finished `out` is not re-run.

    Any error is recorded as a failed result (with the reason) before it propagates, so a
    grid sees the failure; an unreadable checkpoint as a corrupt one, naming it; an interrupt
    leaves a checkpoint and no result. `store.Corrupt` when `out` has an unreadable result.json.
    A ValueError, before anything is written, when `out` holds another cell (see `_held_cell`).
    """
    out = Path(out)
    with _one_writer(out) as lock:
        _held_cell(out, cfg, replace)
        done = store.read_result(out)
        if done and done.get("status") == FINISHED:
            return done
        start = time.monotonic()
        try:
            return _run(cfg, out, interrupt or Interrupt(), show_progress, start, lock.check if lock else _held)
        except (Preempted, store.LockLost):  # the latter: the folder is another run's now, write nothing
            raise
        except store.Corrupt as err:
            _finish(
                out,
                cfg,
                CORRUPT,
                TrainState(wall_s=time.monotonic() - start),
                torch.device("cpu"),
                {},
                reason=str(err),
                files=(err.path.name,),
            )
            raise
        except Exception as err:
            _finish(
                out,
                cfg,
                FAILED,
                TrainState(wall_s=time.monotonic() - start),
                torch.device("cpu"),
                {},
                reason=f"{type(err).__name__}: {err}",
            )
            raise


def _probe_all(
    cfg: CellConfig,
    model: Method,
    train: ImageSet,
    test: ImageSet,
    device: torch.device,
    final_loss: float,
    online: OnlineHead | None,
) -> tuple[dict, dict]:
    """The final metrics and per-image correctness, the random-init floor's included."""
    metrics, correct = evaluate(cfg, model.encoder, train, test, device, online)
    metrics |= {FINAL_LOSS: final_loss, RANDOM_INIT_TOP1: None}
    if cfg.eval.random_init:
        baseline = initial_method(cfg, device, len(train.classes)).encoder
        floor, floor_correct = evaluate(cfg, baseline, train, test, device, only=(random_init_protocol(cfg),))
        metrics[RANDOM_INIT_TOP1], correct["random_init"] = floor[LINEAR_TOP1], floor_correct["linear"]
    return metrics, correct


def _stop_requested(interrupt: Interrupt, step: int, steps: int, device: torch.device) -> bool:
    """Whether to stop after `step` (counted from 1 within the epoch's `steps`). One process reads its own
    flag, which costs nothing. Several agree through an all-reduce, which makes the host wait for the
    device: only every INTERRUPT_POLL_STEPS steps and at the end of the epoch, at the same steps on every rank."""
    if dist.active() and step % INTERRUPT_POLL_STEPS and step != steps:
        return False
    return dist.any_rank(interrupt.requested, device)


def _held() -> None:
    """The lock check of a rank that holds no lock (the main rank checks its own)."""


def _run(
    cfg: CellConfig, out: Path, interrupt: Interrupt, show_progress: bool, start: float, held: Callable[[], None]
) -> dict:
    """Train and probe; `held()` before every write raises store.LockLost once the cell's lock file is
    gone (its folder deleted while it runs): a new run may have taken the folder, so this one stops."""
    if dist.is_main():
        store.write_yaml(out / store.CONFIG, cfg.to_dict())
    device = resolve_device(cfg.train.device)
    train, test = load_data(cfg)
    run = Training.setup(cfg, train, device)
    model, steps, epochs = run.method, run.steps, cfg.train.epochs
    ckpt = out / store.CHECKPOINT
    state = TrainState()
    if ckpt.exists():
        state = _load(ckpt, model, run.optimizer, run.scheduler, run.online)
        state.resumed_at.append({"epoch": state.epoch, "step": state.step})
    prior_wall = state.wall_s
    bar = Progress(steps * epochs, "pretrain") if show_progress and dist.is_main() else None
    log = EpochLog(
        model,
        run.views,
        run.batcher,
        steps,
        cfg.train.log_every,
        state,
        probe=lambda: evaluate(cfg, model.encoder, train, test, device, only=(LBFGS,))[0],
        loggers=open_loggers(out, cfg, state.epoch) if dist.is_main() else None,
    )

    def save() -> None:
        held()
        state.wall_s = prior_wall + time.monotonic() - start
        if dist.is_main():
            _save(ckpt, model, run.optimizer, run.scheduler, state, run.online)

    while state.epoch < epochs:
        epoch, t0 = state.epoch, time.monotonic()
        own = state.loss_sum[dist.rank()] if isinstance(state.loss_sum, list) else state.loss_sum
        loss_sum = torch.tensor(own, device=device)  # each rank's own part: the epoch's mean over ranks stays exact
        for step, x, y in run.epoch(epoch, start=state.step):
            loss_sum += run.step(x, y, epoch, step)
            state.step += 1
            state.images += x.shape[0] * dist.world()
            if _stop_requested(interrupt, state.step, steps, device):
                state.loss_sum = dist.every_rank(float(loss_sum), device)
                state.train_s += time.monotonic() - t0
                save()
                log.close()  # the back-ends' runs end here, before a rerun continues them
                raise Preempted(f"{interrupt.reason} at epoch {epoch} step {state.step}; checkpoint written")
        epoch_loss = float(dist.mean(loss_sum)) / steps  # waits for the epoch's last step
        state.train_s += time.monotonic() - t0
        state.epoch_s.append(round(time.monotonic() - t0, 3))
        state.epoch, state.step, state.loss_sum = epoch + 1, 0, 0.0
        state.losses.append(epoch_loss)
        held()
        log.epoch(state, epoch_loss, run.scheduler.get_last_lr()[0], prior_wall + time.monotonic() - start)
        if not math.isfinite(epoch_loss):
            state.wall_s = prior_wall + time.monotonic() - start
            return log.finish(
                _finish(
                    out,
                    cfg,
                    FAILED,
                    state,
                    device,
                    {FINAL_LOSS: epoch_loss},
                    reason=f"non-finite loss ({epoch_loss}) in epoch {epoch + 1}",
                )
            )
        if bar:
            bar.update(
                state.epoch * steps,
                epoch=f"{state.epoch}/{epochs}",
                loss=f"{epoch_loss:.4f}",
                img_s=f"{state.images / max(state.train_s, 1e-9):.0f}",
            )
        if state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == epochs:
            save()

    metrics, correct = (
        _probe_all(cfg, model, train, test, device, state.losses[-1], run.online) if dist.is_main() else ({}, {})
    )
    held()
    if dist.is_main():
        store.write_correct(out / store.CORRECT, {k: v.numpy() for k, v in correct.items()})
    dist.barrier()
    state.wall_s = prior_wall + time.monotonic() - start
    return log.finish(_finish(out, cfg, FINISHED, state, device, metrics))
