"""SimCLR: a projector and a contrastive loss over the 2N views, negatives gathered across ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import CellConfig
from ..losses import contrastive_loss
from .registry import Method, register


@register
class SimCLR(Method):
    name = "simclr"
    doc = (
        "contrastive (the paper): projector model.head, loss loss.name (NT-Xent, NT-Logistic, margin, "
        "semi-hard mining) over both views of the global batch"
    )

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__(cfg, n_classes, **args)
        # the projector, as every method calls it; the attribute keeps the name its checkpoints' keys
        # (head.*) were written under, so an interrupted cell resumes from its checkpoint
        self.head = self.projection_head(cfg)
        self.loss_config = cfg.loss

    def project(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward(self, views: tuple[Tensor, ...]) -> Tensor:
        """z = projector(encoder(x)) of both views as one batch."""
        return self.project(torch.cat(views))

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        z1, z2 = outputs.float().chunk(2)
        c = self.loss_config
        return contrastive_loss(c.name, z1, z2, c.temperature, c.normalize, c.margin, c.semi_hard)
