"""Evaluation of a frozen encoder: feature extraction, a full-batch linear probe and a weighted kNN.

Both feature probes run on the features' device and take under a second on a 2-core CPU for
5000 x 256 features, so every cell of a grid can be evaluated the same way.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


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


def extract_features(encoder: nn.Module, images_uint8: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str | None = None, bf16: bool = False) -> torch.Tensor:
    """h for every image (uint8 (N, 3, H, W) -> float32 (N, D) on ``device``, default the encoder's).

    Frozen (see ``_frozen``), no augmentation, under inference mode, on channels_last input (the
    encoder's layout) and, with ``bf16``, under bf16 autocast. The result is an ordinary tensor
    (concatenated outside inference mode), so the probes may train on it.
    """
    where: torch.device = _device_of(encoder) if device is None else torch.device(device)
    with _frozen(encoder), torch.inference_mode(), torch.autocast(where.type, torch.bfloat16, enabled=bf16):
        chunks = [encoder(_to_float(images_uint8[i:i + batch_size], where)
                          .contiguous(memory_format=torch.channels_last)).float()
                  for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, 0, device=where)


def _stats(train_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the train features (constant dimensions get std 1e-6, not 0)."""
    return train_f.mean(0), train_f.std(0).clamp_min(1e-6)


def _topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1).float().mean().item()


def _accuracies(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top1 and top5 fractions; top5 means top-min(5, C) so it stays defined for few classes."""
    return {"top1": _topk_accuracy(logits, y, 1), "top5": _topk_accuracy(logits, y, min(5, num_classes))}


def per_class_top1(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 on each class's test images (None for a class without any); weighted by the class
    sizes they average to the top-1, since the prediction is the same top-1 index."""
    hit = (logits.topk(1, dim=1).indices[:, 0] == y).double()
    counts = torch.bincount(y, minlength=num_classes).tolist()
    hits = torch.bincount(y, weights=hit, minlength=num_classes).tolist()
    return [h / n if n else None for h, n in zip(hits, counts)]


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, l2: float = 1e-2, iterations: int = 100) -> dict[str, Any]:
    """Multinomial logistic regression on standardised features, fitted full-batch with L-BFGS.

    Full batch and zero init make it deterministic and free of learning-rate tuning; ``l2`` is the
    penalty l2/2 * |W|^2 added to the mean cross-entropy. The default converges within ``iterations``
    on typical features, so the score reflects the features rather than the optimiser budget (on
    CIFAR-10 features, 5000 train, it scored within a point of 1e-3). Returns top-1, top-min(5, C)
    and per_class (each class's top-1, see ``per_class_top1``).
    """
    train_f, test_f = train_f.detach().float(), test_f.detach().float()
    mean, std = _stats(train_f)
    x, x_test = (train_f - mean) / std, (test_f - mean) / std
    y, y_test = train_y.to(x.device), test_y.to(x.device)
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations, history_size=10,
                                tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        logits = x_test @ w + b
    return {**_accuracies(logits, y_test, num_classes), "per_class": per_class_top1(logits, y_test, num_classes)}


@torch.no_grad()
def knn_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
              num_classes: int, k: int = 200, t: float = 0.1, chunk_size: int | None = None) -> float:
    """Weighted kNN top-1 (Wu et al. 2018, InstDisc; as in solo-learn): cosine similarity on l2-normalised
    features, each of the k nearest train samples votes for its class with weight exp(sim / t).

    Test rows are processed in chunks so the similarity block stays near 16M floats.
    """
    train_n, test_n = F.normalize(train_f.float(), dim=1), F.normalize(test_f.float(), dim=1)
    train_y, test_y = train_y.to(train_n.device), test_y.to(train_n.device)
    k = min(k, len(train_n))
    chunk_size = chunk_size or max(1, 2**24 // max(len(train_n), 1))
    correct = torch.zeros((), dtype=torch.long, device=train_n.device)  # read once, at the end
    for i in range(0, len(test_n), chunk_size):
        sim, idx = (test_n[i:i + chunk_size] @ train_n.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk_size]).sum()
    return correct.item() / max(len(test_n), 1)


def augmented_linear_probe(encoder: nn.Module, train_images: torch.Tensor, train_y: torch.Tensor,
                           test_images: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                           augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                           epochs: int = 100, batch_size: int = 256, base_lr: float = 0.1, seed: int = 0,
                           device: torch.device | str | None = None) -> dict[str, float]:
    """The paper's linear evaluation (Appendix B.6): a linear classifier on h of augmented images
    (``augment(x, generator)``, e.g. crop + flip) through the frozen encoder; Nesterov SGD,
    lr ``base_lr`` x batch/256, cosine decay, no weight decay. Test images are not augmented.

    h is standardised with the un-augmented train features' statistics (as in ``linear_probe``) so
    one lr suits every encoder. Costs ``epochs`` encoder passes over the train set: meant for the GPU.
    """
    device = torch.device(device) if device is not None else _device_of(encoder)
    g = torch.Generator(device).manual_seed(seed)
    train_y, test_y = train_y.to(device), test_y.to(device)
    n, batch_size = len(train_images), min(batch_size, len(train_images))
    per_epoch = n // batch_size
    mean, std = _stats(extract_features(encoder, train_images, batch_size, device))
    classifier = nn.Linear(len(mean), num_classes).to(device)
    nn.init.zeros_(classifier.weight)     # zero init: the result depends on the seed alone
    nn.init.zeros_(classifier.bias)
    opt = torch.optim.SGD(classifier.parameters(), lr=base_lr * batch_size / 256, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    with _frozen(encoder):
        for step in range(epochs * per_epoch):
            if step % per_epoch == 0:
                order = torch.randperm(n, generator=g, device=device)
            idx = order[step % per_epoch * batch_size:][:batch_size]
            with torch.no_grad():
                h = encoder(augment(_to_float(train_images[idx.to(train_images.device)], device), g)).float()
            loss = F.cross_entropy(classifier((h - mean) / std), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        logits = classifier((extract_features(encoder, test_images, batch_size, device) - mean) / std)
    return _accuracies(logits, test_y, num_classes)
