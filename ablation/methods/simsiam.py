"""SimSiam (Chen & He, 2021): a predictor against the stop-gradient projection of the other view."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CellConfig
from ..model import build_head
from .registry import Method, param, register


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """Negative cosine similarity, mean over rows; z gets no gradient (the stop-gradient)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@register
class SimSiam(Method):
    name = "simsiam"
    doc = (
        "projector model.head ending in batch norm + bottleneck predictor, symmetric negative cosine "
        "against the stop-gradient projection of the other view; no target network"
    )
    predictor_hidden: int = param(512, 1, 65536, "predictor bottleneck width (SimSiam: 512 for 2048-d z)")

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__(cfg, n_classes, **args)
        head = self.projection_head(cfg)
        self.projector = nn.Sequential(head, nn.BatchNorm1d(head.out_dim, affine=False))
        self.predictor = build_head("nonlinear", head.out_dim, self.predictor_hidden, head.out_dim, 2)

    def project(self, x: Tensor) -> Tensor:
        return self.projector(self.features(x))

    def forward(self, views: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """(predictions, projections) of both views as one batch."""
        z = self.project(torch.cat(views))
        return self.predictor(z), z

    def loss(self, outputs: tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
        p1, p2 = outputs[0].float().chunk(2)
        z1, z2 = outputs[1].float().chunk(2)
        return (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
