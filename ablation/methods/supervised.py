"""Supervised: cross-entropy on the labels through a linear classifier, on one augmented view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CellConfig
from .registry import Method, register

if TYPE_CHECKING:
    from ..augment import TwoViews
    from ..data.source_crop import SourceViews


@register
class Supervised(Method):
    name = "supervised"
    doc = (
        "cross-entropy on the labels, linear classifier on h, one view: views(base(x)) "
        "(Table 1's supervised row); probed like every method"
    )
    n_views = 1

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__(cfg, n_classes, **args)
        self.classifier = nn.Linear(self.dim, n_classes)

    def views(self, pair: TwoViews | SourceViews, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        return (pair.one(x, generator),)

    def forward(self, views: tuple[Tensor, ...]) -> Tensor:
        """The classifier's logits of the one view."""
        (x,) = views
        return self.classifier(self.features(x))

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), labels)
