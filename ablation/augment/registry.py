"""The augmentation registry: one decorated dataclass per op, validated parameters, p in the base.

An op is a class with a unique ``name``, a one-line ``doc`` and parameters declared with
:func:`param`. ``@register`` turns it into a dataclass and records it in :data:`REGISTRY`, so
adding an augmentation is one decorated definition. Ops split randomness from computation:
``sample`` draws every per-sample parameter (on ``x.device``) and ``apply`` is a pure function
of the image and those parameters, so a draw can be replayed exactly.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import Tensor

REGISTRY: dict[str, type["Augmentation"]] = {}

Params = dict[str, Tensor]


def param(default: Any, low: float | None = None, high: float | None = None, doc: str = "",
          choices: Sequence[Any] | None = None) -> Any:
    """Declare an op parameter: its type is the default's type; [low, high] or choices bound it."""
    meta = {"type": type(default), "low": low, "high": high, "doc": doc,
            "choices": tuple(choices) if choices is not None else None}
    return dataclasses.field(default=default, metadata=meta)


def allowed(field: dataclasses.Field) -> str:
    """Human-readable allowed values of a parameter, for errors and `ablate augs`."""
    meta = field.metadata
    if meta["choices"] is not None:
        return "{" + ", ".join(map(str, meta["choices"])) + "}"
    if meta["low"] is not None or meta["high"] is not None:
        return f"[{meta['low']}, {meta['high']}]"
    return meta["type"].__name__


def coerce(op: str, field: dataclasses.Field, value: Any) -> Any:
    """Check a value against its parameter's type and bounds; ints are accepted for floats."""
    meta = field.metadata
    kind = meta["type"]
    ok_type = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok_type:
        raise ValueError(f"{op}: parameter '{field.name}' must be {kind.__name__}, got {value!r}; "
                         f"allowed: {allowed(field)}")
    value = kind(value)
    if kind is float and not math.isfinite(value):  # NaN passes every comparison: refuse it by name
        raise ValueError(f"{op}: parameter '{field.name}' = {value!r} is not allowed (not a finite number); "
                         f"allowed: {allowed(field)}")
    out_of_range = (meta["low"] is not None and value < meta["low"]) or (
        meta["high"] is not None and value > meta["high"])
    if out_of_range or (meta["choices"] is not None and value not in meta["choices"]):
        raise ValueError(f"{op}: parameter '{field.name}' = {value!r} is not allowed; "
                         f"allowed: {allowed(field)}")
    return value


def check_ranges(op: Any) -> None:
    """Every `<x>_min`, `<x>_max` pair of parameters is a range: its low end may not exceed its high end."""
    names = {f.name for f in dataclasses.fields(op)}
    for low in sorted(n for n in names if n.endswith("_min")):
        high = low.removesuffix("_min") + "_max"
        if high in names and getattr(op, low) > getattr(op, high):
            raise ValueError(f"{op.name}: {low} = {getattr(op, low)!r} is greater than {high} = "
                             f"{getattr(op, high)!r}; a range needs {low} <= {high}")


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
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


def registrable_name(cls: Any, base: type, registry: dict[str, type], what: str) -> str:
    """The unique ``name`` of ``cls`` (a ``base`` subclass with its own ``name`` and one-line ``doc``)
    about to enter ``registry``; the registries of augmentations and methods share these rules."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{getattr(cls, '__name__', cls)} must subclass {base.__name__} to be registered")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or not isinstance(cls.__dict__.get("doc"), str):
        raise ValueError(f"{cls.__name__} needs a class attribute 'name' and a one-line 'doc'")
    if name in registry:
        raise ValueError(f"{what} '{name}' is already registered by {registry[name].__name__}")
    return name


def register(cls: type) -> type:
    """Class decorator: make ``cls`` a dataclass and record it under its unique ``name``."""
    name = registrable_name(cls, Augmentation, REGISTRY, "augmentation")
    annotated = inspect.get_annotations(cls)
    unannotated = [k for k, v in vars(cls).items() if isinstance(v, dataclasses.Field) and k not in annotated]
    if unannotated:
        raise ValueError(f"{name}: parameters {unannotated} need a type annotation, "
                         f"e.g. 's: float = param(...)'")
    cls = dataclasses.dataclass(frozen=True)(cls)
    REGISTRY[name] = cls
    return cls


def sample_all(ops: Sequence[Augmentation], x: Tensor, generator: torch.Generator | None) -> Params:
    """Draw the parameters of a sequence of shape-preserving ops, flattened as '<index>.<key>'."""
    return {f"{i}.{key}": value for i, op in enumerate(ops)
            for key, value in op.sample(x, generator).items()}


def apply_all(ops: Sequence[Augmentation], x: Tensor, params: Params) -> Tensor:
    """Replay :func:`sample_all`'s draw: each op sees only its own parameters."""
    for i, op in enumerate(ops):
        prefix = f"{i}."
        x = op.apply(x, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)})
    return x


def describe(registry: dict[str, Any], fields: Callable[[Any], Iterable[dataclasses.Field]]) -> list[dict[str, Any]]:
    """Every entry of a registry of `param`-declared classes (`fields` lists a class's parameters) with
    its doc and parameters (name, type, default, range, doc): what `ablate augs` and `ablate methods` print."""
    return [{"name": name, "doc": cls.doc,
             "params": [{"name": f.name, "type": f.metadata["type"].__name__, "default": f.default,
                         "range": allowed(f), "doc": f.metadata["doc"]} for f in fields(cls)]}
            for name, cls in registry.items()]


def describe_registry() -> list[dict[str, Any]]:
    """Every registered op with its doc and parameters."""
    return describe(REGISTRY, dataclasses.fields)
