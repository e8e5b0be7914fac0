"""Supervised: cross-entropy on the labels through a linear classifier, on one augmented view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Method, register


@register
class Supervised(Method):
    name = "supervised"
    doc = (
        "cross-entropy on the labels, linear classifier on h, one view: views(base(x)) "
        "(Table 1's supervised row); probed like every method"
    )
    n_views = 1

    def __init__(self, cfg, n_classes: int, **args) -> None:
        super().__init__(cfg, n_classes, **args)
        self.classifier = nn.Linear(self.dim, n_classes)

    def views(self, pair, x, generator) -> tuple[Tensor, ...]:
        return (pair.one(x, generator),)

    def forward(self, views: tuple[Tensor, ...]) -> Tensor:
        """The classifier's logits of the one view."""
        (x,) = views
        return self.classifier(self.features(x))

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), labels)
