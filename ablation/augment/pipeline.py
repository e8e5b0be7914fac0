"""Compose (a sequence of ops that behaves like one op) and TwoViews (the SimCLR pair)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import choices_error
from ..names import VIEW_MODES
from .registry import Augmentation, Params, apply_all, sample_all
from .spec import SpecLike, format_spec, parse_ops


class Compose:
    """Ops applied in sequence; ``sample`` draws all of them up front so a draw can be replayed."""

    def __init__(self, ops: Sequence[Augmentation] = ()) -> None:
        self.ops = tuple(ops)

    @property
    def spec(self) -> str:
        """Canonical spec string; ``parse_spec(c.spec) == c``."""
        return format_spec(self.ops)

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> Params:
        return sample_all(self.ops, x, generator)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return apply_all(self.ops, x, params)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, self.sample(x, generator))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Compose) and self.ops == other.ops

    def __repr__(self) -> str:
        return f"Compose({self.spec!r})"


def parse_spec(spec: SpecLike | Compose) -> Compose:
    """ "crop+color(s=0.5)+blur(p=1.0)", a YAML list, "" or "none" -> Compose."""
    return spec if isinstance(spec, Compose) else Compose(parse_ops(spec))


class TwoViews:
    """Two augmented views of one batch, in one call.

    ``base`` is drawn once per image and shared by both views. "asymmetric" (the paper's ablation):
    view 1 = views(base(x)), view 2 = base(x). "symmetric": both views get independent draws of
    ``views``, computed as one batch of 2B images.
    """

    MODES = VIEW_MODES

    def __init__(self, views: SpecLike | Compose, base: SpecLike | Compose = "none", mode: str = "asymmetric") -> None:
        if mode not in self.MODES:
            raise choices_error("two-view mode", mode, self.MODES)
        self.views, self.base, self.mode = parse_spec(views), parse_spec(base), mode

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x = self.base(x, generator)
        if self.mode == "asymmetric":
            return self.views(x, generator), x
        first, second = self.views(torch.cat([x, x]), generator).chunk(2)
        return first, second

    def one(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A single view, views(base(x)), for methods that train on one view (supervised)."""
        return self.views(self.base(x, generator), generator)

    def __repr__(self) -> str:
        return f"TwoViews(views={self.views.spec!r}, base={self.base.spec!r}, mode={self.mode!r})"
