"""Evaluation of a frozen encoder: feature extraction, the three linear protocols and a weighted kNN.

- ``linear_probe`` (protocol lbfgs): full-batch L-BFGS on standardised features of un-augmented images;
  under a second on a 2-core CPU for 5000 x 256 features.
- ``sgd_probe`` (protocol sgd): the paper's Appendix B.6, a linear classifier trained with Nesterov SGD on
  the frozen encoder's features of cropped and flipped images; costs its epochs in encoder passes.
- ``OnlineHead`` (protocol online): a linear head on detached features trained alongside pretraining, as
  the paper's reference code does; the paper (B.6) says it gives numbers similar to the sgd protocol.

Every probe returns the same scores (``scores``): top-1, top-min(5, C), per-class top-1 and the per-test-image
correctness that the report's paired intervals are computed from. Features are float32 on every device:
a bf16 autocast around a probe changes nothing (bf16 features moved linear top-1 by up to a point on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import dist


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def _to_float(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images_uint8.to(device, non_blocking=True).float().div_(255)


@contextmanager
def _frozen(encoder: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics) inside; every module's own training flag restored after,
    so probes can run in the middle of training."""
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def extract_features(
    encoder: nn.Module, images_uint8: torch.Tensor, batch_size: int = 512, device: torch.device | str | None = None
) -> torch.Tensor:
    """h for every image (uint8 (N, 3, H, W) -> float32 (N, D) on ``device``, default the encoder's).

    Frozen (see ``_frozen``), no augmentation, under inference mode, on channels_last input (the
    encoder's layout), in float32 whatever autocast surrounds the call (TF32 matmuls where the device
    allows them). The result is an ordinary tensor (concatenated outside inference mode), so the
    probes may train on it.
    """
    where: torch.device = _device_of(encoder) if device is None else torch.device(device)
    with _frozen(encoder), torch.inference_mode(), torch.autocast(where.type, enabled=False):
        chunks = [
            encoder(
                _to_float(images_uint8[i : i + batch_size], where).contiguous(memory_format=torch.channels_last)
            ).float()
            for i in range(0, len(images_uint8), batch_size)
        ]
    return torch.cat(chunks) if chunks else torch.empty(0, 0, device=where)


def _stats(train_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the train features (constant dimensions get std 1e-6, not 0)."""
    return train_f.mean(0), train_f.std(0).clamp_min(1e-6)


def _topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1).float().mean().item()


def scores(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """What every linear protocol reports from its test logits: top1 and top5 fractions (top5 means
    top-min(5, C), so it stays defined for few classes), per_class (``per_class_top1``) and correct, the
    bool per test image of its top-1 being right (the report's paired intervals use it)."""
    correct = logits.argmax(1) == y
    return {
        "top1": correct.float().mean().item(),
        "top5": _topk_accuracy(logits, y, min(5, num_classes)),
        "per_class": per_class_top1(correct, y, num_classes),
        "correct": correct.cpu(),
    }


def per_class_top1(correct: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 on each class's test images (None for a class without any), from the per-image ``correct``;
    weighted by the class sizes they average to the top-1."""
    counts = torch.bincount(y, minlength=num_classes).tolist()
    hits = torch.bincount(y, weights=correct.double(), minlength=num_classes).tolist()
    return [h / n if n else None for h, n in zip(hits, counts)]


def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    l2: float = 1e-2,
    iterations: int = 100,
) -> dict[str, Any]:
    """Multinomial logistic regression on standardised features, fitted full-batch with L-BFGS.

    Full batch and zero init make it deterministic and free of learning-rate tuning; ``l2`` is the
    penalty l2/2 * |W|^2 added to the mean cross-entropy. The default converges within ``iterations``
    on typical features, so the score reflects the features rather than the optimiser budget (on
    CIFAR-10 features, 5000 train, it scored within a point of 1e-3). Returns ``scores``.
    """
    train_f, test_f = train_f.detach().float(), test_f.detach().float()
    mean, std = _stats(train_f)
    x, x_test = (train_f - mean) / std, (test_f - mean) / std
    y, y_test = train_y.to(x.device), test_y.to(x.device)
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1,
            max_iter=iterations,
            history_size=10,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        logits = x_test @ w + b
    return scores(logits, y_test, num_classes)


@torch.no_grad()
def knn_correct(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018, InstDisc; as in solo-learn), whether each test image's top-1 is right:
    cosine similarity on l2-normalised features, each of the k nearest train samples votes for its class
    with weight exp(sim / t).

    Test rows are processed in chunks so the similarity block stays near 16M floats.
    """
    train_n, test_n = F.normalize(train_f.float(), dim=1), F.normalize(test_f.float(), dim=1)
    train_y, test_y = train_y.to(train_n.device), test_y.to(train_n.device)
    k = min(k, len(train_n))
    chunk_size = chunk_size or max(1, 2**24 // max(len(train_n), 1))
    hits = []
    for i in range(0, len(test_n), chunk_size):
        sim, idx = (test_n[i : i + chunk_size] @ train_n.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / t).exp())
        hits.append(votes.argmax(1) == test_y[i : i + chunk_size])
    return torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)


def knn_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int | None = None,
) -> float:
    """Weighted kNN top-1 (see ``knn_correct``)."""
    hits = knn_correct(train_f, train_y, test_f, test_y, num_classes, k, t, chunk_size)
    return hits.float().mean().item() if len(hits) else 0.0


def _standardiser(train_f: torch.Tensor) -> nn.Module:
    """A fixed affine map to zero mean and unit variance per feature (the train features' statistics),
    as a non-affine batch norm in eval mode would apply: one lr then suits every encoder's features."""
    mean, std = _stats(train_f)
    norm = nn.BatchNorm1d(len(mean), affine=False, eps=0.0).to(train_f.device).eval()
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(std.square())
    return norm


def sgd_probe(
    encoder: nn.Module,
    train_images: torch.Tensor,
    train_y: torch.Tensor,
    test_images: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    epochs: int = 90,
    batch_size: int = 4096,
    seed: int = 0,
    extract_batch: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """The paper's linear evaluation (Appendix B.6): a linear classifier on h of augmented images
    (``augment(x, generator)``: crop + flip) through the frozen encoder in eval mode; Nesterov SGD
    (momentum 0.9), lr 0.1 x batch/256 with cosine decay, no weight decay, ``batch_size`` images a step
    (the training set's size when smaller), ``epochs`` passes. Test images are not augmented.

    One departure, so that one lr suits every encoder: h is standardised with the un-augmented train
    features' statistics (``_standardiser``), as the batch norm that MoCo v3's and SimCLR v2's linear heads
    put before the classifier does. Costs ``epochs`` encoder passes over the train set. Returns ``scores``.
    """
    device = torch.device(device) if device is not None else _device_of(encoder)
    g = torch.Generator(device).manual_seed(seed)
    train_y, test_y = train_y.to(device), test_y.to(device)
    n, batch_size = len(train_images), min(batch_size, len(train_images))
    per_epoch = n // batch_size
    norm = _standardiser(extract_features(encoder, train_images, extract_batch, device))
    classifier = _zero_linear(len(norm.running_mean), num_classes, device)
    opt = torch.optim.SGD(classifier.parameters(), lr=0.1 * batch_size / 256, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    with _frozen(encoder):
        for step in range(epochs * per_epoch):
            if step % per_epoch == 0:
                order = torch.randperm(n, generator=g, device=device)
            idx = order[step % per_epoch * batch_size :][:batch_size]
            h = torch.cat(
                [
                    _features_of(encoder, augment(_to_float(_gather(train_images, part), device), g))
                    for part in idx.split(extract_batch)
                ]
            )
            loss = F.cross_entropy(classifier(norm(h)), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        logits = classifier(norm(extract_features(encoder, test_images, extract_batch, device)))
    return scores(logits, test_y, num_classes)


def _gather(images: Any, idx: torch.Tensor) -> torch.Tensor:
    """images[idx] of a tensor, or of a set that is read by slices (a folder's centre crops, streamed files)."""
    if isinstance(images, torch.Tensor):
        return images[idx.to(images.device)]
    return torch.cat([images[i : i + 1] for i in idx.tolist()])


def _features_of(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return encoder(x.contiguous(memory_format=torch.channels_last)).float()


def _zero_linear(in_dim: int, out_dim: int, device: torch.device) -> nn.Linear:
    """A linear layer starting at zero, made without drawing from the global RNG: adding a probe never
    moves another random draw, and its result depends on its own seed alone."""
    layer = nn.Linear(in_dim, out_dim, device="meta").to_empty(device=device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class OnlineHead(nn.Module):
    """The online protocol: a linear classifier on detached features of the training views, trained at
    every pretraining step (the paper's reference code trains one this way; B.6 says it gives numbers
    similar to the sgd protocol). A non-affine batch norm standardises h (batch statistics in training,
    running ones at test). Its own Nesterov SGD (lr 0.1 x batch/256, cosine over the whole run, no weight
    decay): the method's optimiser, its parameter groups and its results are the same with or without it.
    """

    def __init__(self, in_dim: int, num_classes: int, batch_size: int, total_steps: int, device: torch.device) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False).to(device)
        self.linear = _zero_linear(in_dim, num_classes, device)
        self.opt = torch.optim.SGD(self.linear.parameters(), lr=0.1 * batch_size / 256, momentum=0.9, nesterov=True)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(total_steps, 1))
        self.num_classes = num_classes

    def step(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """One update on the step's features ``h`` (every view of the batch, views stacked) and labels ``y``
        (of the batch's images, repeated for the views). Nothing here waits for the device."""
        self.train()
        loss = F.cross_entropy(self.linear(self.norm(h.detach().float())), y.repeat(len(h) // len(y)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.linear.parameters():  # every rank's share of the batch, as DDP averages the method's
            p.grad = dist.mean(p.grad)
        self.opt.step()
        self.sched.step()

    def evaluate(self, test_f: torch.Tensor, test_y: torch.Tensor) -> dict[str, Any]:
        """``scores`` of the head on the frozen encoder's test features."""
        self.eval()
        with torch.no_grad():
            logits = self.linear(self.norm(test_f.float()))
        return scores(logits, test_y.to(logits.device), self.num_classes)

    def checkpoint(self) -> dict[str, Any]:
        return {"head": self.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def restore(self, saved: dict[str, Any]) -> None:
        self.load_state_dict(saved["head"])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])


def capture_features(encoder: nn.Module) -> list[torch.Tensor]:
    """A list that receives every output of ``encoder`` in training mode (a forward hook): how the online head
    sees the features of the views the method trains on, without another encoder pass (probes run the
    encoder in eval mode, so their features are not kept)."""
    seen: list[torch.Tensor] = []

    def keep(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            seen.append(output)

    encoder.register_forward_hook(keep)
    return seen
