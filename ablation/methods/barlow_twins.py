"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of the two views' projections towards identity."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import CellConfig
from ..dist import gather_with_grad
from .registry import Method, param, register


def _standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Each feature to zero mean and unit variance over the batch (BatchNorm without affine, biased variance)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """sum_i (1 - c_ii)^2 + lambd sum_{i != j} c_ij^2, with c the cross-correlation over the global batch.

    Under torch.distributed the projections are gathered (with gradients) first, so every rank
    computes the loss of the whole batch and DDP's gradient mean gives its exact gradient.
    """
    z1, z2 = gather_with_grad(torch.cat([z1, z2], 1)).split(z1.shape[1], 1)
    c = _standardise(z1).T @ _standardise(z2) / z1.shape[0]
    diagonal = torch.diagonal(c)
    return (1 - diagonal).pow(2).sum() + lambd * (c.pow(2).sum() - diagonal.pow(2).sum())


@register
class BarlowTwins(Method):
    name = "barlow_twins"
    doc = (
        "projector model.head, cross-correlation of the two views' standardised projections over the "
        "global batch pushed to the identity (off-diagonal weight lambd)"
    )
    lambd: float = param(0.0051, 0.0, 10.0, "weight of the off-diagonal terms (Barlow Twins: 0.0051 for 8192-d z)")
    bias_lr: float = param(
        0.0048 / 0.2,
        0.0,
        1.0,
        "lr of biases and batch-norm parameters as a fraction of the weights' (the authors' LARS: 0.0048 / 0.2)",
    )

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__(cfg, n_classes, **args)
        self.projector = self.projection_head(cfg)

    def bias_lr_scale(self) -> float:
        return self.bias_lr

    def project(self, x: Tensor) -> Tensor:
        return self.projector(self.features(x))

    def forward(self, views: tuple[Tensor, ...]) -> Tensor:
        return self.project(torch.cat(views))

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        z1, z2 = outputs.float().chunk(2)
        return barlow_twins_loss(z1, z2, self.lambd)
