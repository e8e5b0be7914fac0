"""The augmentation registry: one decorated dataclass per op, validated parameters, p in the base.

An op is a class with a unique ``name``, a one-line ``doc`` and parameters declared with
:func:`param`. ``@register`` turns it into a dataclass and records it in :data:`REGISTRY`, so
adding an augmentation is one decorated definition (the machinery every registry shares, renames
included, is ablation/registry.py). Ops split randomness from computation:
``sample`` draws every per-sample parameter (on ``x.device``) and ``apply`` is a pure function
of the image and those parameters, so a draw can be replayed exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import OP_RENAMES, coerce, declared_params, entry_docs, param, registrable_name

REGISTRY: dict[str, type[Augmentation]] = {}

Params = dict[str, Tensor]


def check_ranges(op: Any) -> None:
    """Every `<x>_min`, `<x>_max` pair of parameters is a range: its low end may not exceed its high end."""
    names = {f.name for f in dataclasses.fields(op)}
    for low in sorted(n for n in names if n.endswith("_min")):
        high = low.removesuffix("_min") + "_max"
        if high in names and getattr(op, low) > getattr(op, high):
            raise ValueError(
                f"{op.name}: {low} = {getattr(op, low)!r} is greater than {high} = "
                f"{getattr(op, high)!r}; a range needs {low} <= {high}"
            )


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Base of every op: validates parameters, draws the per-sample apply mask and applies it.

    Subclasses implement ``draw`` (extra per-sample parameters) and ``transform`` (the op applied
    to every sample); the base keeps ``p`` so no op repeats the masking logic.
    """

    name: ClassVar[str]
    doc: ClassVar[str]
    p: float = param(1.0, 0.0, 1.0, "probability of applying the op, drawn per sample")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, coerce(self.name, field, getattr(self, field.name)))
        check_ranges(self)

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        """Per-sample parameters beyond the apply mask; none by default."""
        return {}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        """The op on every sample of ``x`` (pure; ``apply`` keeps it only where the mask is set)."""
        raise NotImplementedError

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> Params:
        """Draw the parameters of one application to the batch ``x``."""
        mask = torch.rand(x.shape[0], device=x.device, generator=generator) < self.p
        return {"mask": mask, **self.draw(x, generator)}

    @property
    def is_noop(self) -> bool:
        """True when these parameters cannot change any image (then ``apply`` returns ``x`` itself)."""
        return self.p == 0.0

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Apply with given parameters; samples whose mask is False come back untouched."""
        if self.is_noop:
            return x
        y = self.transform(x, params)
        return y if self.p == 1.0 else torch.where(params["mask"].view(-1, 1, 1, 1), y, x)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, self.sample(x, generator))

    def changed(self) -> dict[str, Any]:
        """Parameters that differ from their defaults, in declaration order (for canonical specs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` a dataclass and record it under its unique ``name``."""
    name = registrable_name(cls, Augmentation, REGISTRY, "augmentation", OP_RENAMES)
    declared_params(cls, name)  # each needs a type annotation to become a dataclass field
    cls = dataclasses.dataclass(frozen=True)(cls)
    REGISTRY[name] = cls
    return cls


def sample_all(ops: Sequence[Augmentation], x: Tensor, generator: torch.Generator | None) -> Params:
    """Draw the parameters of a sequence of shape-preserving ops, flattened as '<index>.<key>'."""
    return {f"{i}.{key}": value for i, op in enumerate(ops) for key, value in op.sample(x, generator).items()}


def apply_all(ops: Sequence[Augmentation], x: Tensor, params: Params) -> Tensor:
    """Replay :func:`sample_all`'s draw: each op sees only its own parameters."""
    for i, op in enumerate(ops):
        prefix = f"{i}."
        x = op.apply(x, {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)})
    return x


def describe_registry() -> list[dict[str, Any]]:
    """Every registered op with its doc and parameters."""
    return entry_docs(REGISTRY, dataclasses.fields)
