"""BYOL (Grill et al., 2020): an online network with a predictor regresses a momentum target's projection."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CellConfig
from ..model import build_head
from .registry import Method, param, register


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """Mean over rows of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); the target z gets no gradient."""
    return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1)).mean()


def target_momentum(base: float, step: int, total: int) -> float:
    """BYOL's schedule: 1 - (1 - base) (cos(pi step / total) + 1) / 2, from base at step 0 up to 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


@register
class BYOL(Method):
    name = "byol"
    doc = (
        "projector model.head + predictor, symmetric 2 - 2cos loss against an EMA target (encoder + "
        "projector) whose momentum rises from `momentum` to 1 on a cosine"
    )
    momentum: float = param(0.996, 0.0, 1.0, "target momentum at the start (BYOL: 0.996), cosine-annealed to 1")
    predictor_hidden: int = param(4096, 1, 65536, "predictor hidden width (BYOL: 4096)")

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__(cfg, n_classes, **args)
        self.projector = self.projection_head(cfg)
        out = self.projector.out_dim
        self.predictor = build_head("nonlinear", out, self.predictor_hidden, out, 2)
        self.target = copy.deepcopy(nn.Sequential(self.encoder, self.projector)).requires_grad_(False)

    def project(self, x: Tensor) -> Tensor:
        return self.projector(self.features(x))

    def forward(self, views: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """(online predictions, target projections) of both views as one batch."""
        x = torch.cat(views)
        p = self.predictor(self.project(x))
        with torch.no_grad():
            z = self.target(x.contiguous(memory_format=torch.channels_last))
        return p, z

    def loss(self, outputs: tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
        p1, p2 = outputs[0].float().chunk(2)
        z1, z2 = outputs[1].float().chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    @torch.no_grad()
    def update(self, step: int, total: int) -> None:
        """target <- tau target + (1 - tau) online; identical on every rank, as DDP keeps the online weights so."""
        tau = target_momentum(self.momentum, step, total)
        online = list(itertools.chain(self.encoder.parameters(), self.projector.parameters()))
        target = list(self.target.parameters())
        if len(target) != len(online):
            raise RuntimeError(f"BYOL's target has {len(target)} parameters, its online network {len(online)}")
        torch._foreach_lerp_(target, online, 1 - tau)  # a few multi-tensor kernels, not one per tensor
