"""What the registries of augmentation ops (ablation/augment) and training methods (ablation/methods) share.

A registry is a dict from a unique name to a class, filled by a class decorator where the class is
defined (timm's shape), so adding an entry is one decorated definition. Entries declare their
parameters with `param` (the default's type, bounds or choices, a doc); `coerce` checks a value
against its declaration, `entry_docs` lists a registry for `ablate augs` and `ablate methods`.

Names are inside cell ids: an op's name and its parameters' names are in the canonical spec that the
id hashes. A rename therefore goes through `Renames` (timm keeps deprecation aliases the same way):
the old spelling still parses, and ids spell the name an entry was first registered under, so every
cell finished before the rename keeps its id.

Torch-free, so identity.py spells the ids of parameterless specs without importing torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import choices_error


def param(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    doc: str = "",
    choices: Sequence[Any] | None = None,
) -> Any:
    """Declare a parameter: its type is the default's type; [low, high] or choices bound it."""
    meta = {
        "type": type(default),
        "low": low,
        "high": high,
        "doc": doc,
        "choices": tuple(choices) if choices is not None else None,
    }
    return dataclasses.field(default=default, metadata=meta)


def allowed(field: dataclasses.Field) -> str:
    """Human-readable allowed values of a parameter, for errors and the registry listings."""
    meta = field.metadata
    if meta["choices"] is not None:
        return "{" + ", ".join(map(str, meta["choices"])) + "}"
    if meta["low"] is not None or meta["high"] is not None:
        return f"[{meta['low']}, {meta['high']}]"
    return meta["type"].__name__


def coerce(owner: str, field: dataclasses.Field, value: Any) -> Any:
    """Check a value against its parameter's type and bounds; ints are accepted for floats."""
    meta = field.metadata
    kind = meta["type"]
    ok_type = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok_type:
        raise ValueError(
            f"{owner}: parameter '{field.name}' must be {kind.__name__}, got {value!r}; allowed: {allowed(field)}"
        )
    value = kind(value)
    if kind is float and not math.isfinite(value):  # NaN passes every comparison: refuse it by name
        raise ValueError(
            f"{owner}: parameter '{field.name}' = {value!r} is not allowed (not a finite number); "
            f"allowed: {allowed(field)}"
        )
    out_of_range = (meta["low"] is not None and value < meta["low"]) or (
        meta["high"] is not None and value > meta["high"]
    )
    if out_of_range or (meta["choices"] is not None and value not in meta["choices"]):
        raise ValueError(f"{owner}: parameter '{field.name}' = {value!r} is not allowed; allowed: {allowed(field)}")
    return value


@dataclasses.dataclass(frozen=True)
class Renames:
    """The old names of a registry's entries and of their parameters, so that a rename keeps finished cells.

    ``names``: old name -> the name that replaced it. ``params``: an entry's first name -> {old
    parameter name -> the name that replaced it}. A spec may use any spelling; the current one builds
    the entry and a cell id spells the first one (the one the cells finished before the rename
    hashed). A renamed parameter keeps its place in its class: canonical specs list the parameters in
    declaration order.
    """

    names: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def current(self, name: str) -> str:
        """The name an entry goes by now, given any name it has had."""
        return _forward(self.names, name)

    def first(self, name: str) -> str:
        """The name an entry was first registered under, given any name it has had (what ids spell)."""
        return _forward(_backward(self.names), self.current(name))

    def current_param(self, entry: str, key: str) -> str:
        """The name parameter ``key`` of ``entry`` (any of its names) goes by now."""
        return _forward(self.params.get(self.first(entry), {}), key)

    def first_param(self, entry: str, key: str) -> str:
        """The name parameter ``key`` of ``entry`` was first declared under (what ids spell)."""
        renamed = self.params.get(self.first(entry), {})
        return _forward(_backward(renamed), _forward(renamed, key))


def _forward(renamed: dict[str, str], name: str) -> str:
    """Follow ``renamed`` (old -> new) from ``name`` to its end."""
    seen = {name}
    while name in renamed:
        name = renamed[name]
        if name in seen:
            raise ValueError(f"renames go round in a loop through '{name}'")
        seen.add(name)
    return name


def _backward(renamed: dict[str, str]) -> dict[str, str]:
    """new -> old of ``renamed``; two old names renamed to one name would leave an id ambiguous."""
    back: dict[str, str] = {}
    for old, new in renamed.items():
        if new in back:
            raise ValueError(f"'{back[new]}' and '{old}' are both renamed to '{new}'; a rename has one old name")
        back[new] = old
    return back


# Every rename of an augmentation op or of an op's parameter, old -> new (e.g. {"color": "colour"}, and
# {"color": {"s": "strength"}} keyed by the op's first name): finished cells keep their ids through it.
OP_RENAMES = Renames()


def registrable_name(cls: Any, base: type, registry: dict[str, Any], what: str, renames: Renames | None = None) -> str:
    """The unique ``name`` of ``cls`` (a ``base`` subclass with its own ``name`` and one-line ``doc``)
    about to enter ``registry``; an old name in ``renames`` stays reserved for the entry renamed from it."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{getattr(cls, '__name__', cls)} must subclass {base.__name__} to be registered")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or not isinstance(cls.__dict__.get("doc"), str):
        raise ValueError(f"{cls.__name__} needs a class attribute 'name' and a one-line 'doc'")
    if name in registry:
        raise ValueError(f"{what} '{name}' is already registered by {registry[name].__name__}")
    if renames is not None and name in renames.names:
        raise ValueError(f"{what} '{name}' is an old name of '{renames.current(name)}'; choose another")
    return name


def declared_params(cls: type, name: str) -> dict[str, dataclasses.Field]:
    """The parameters ``cls`` itself declares with `param`, each named; each needs a type annotation."""
    annotated = inspect.get_annotations(cls)
    params = {}
    for key, value in vars(cls).items():
        if isinstance(value, dataclasses.Field):
            if key not in annotated:
                raise ValueError(f"{name}: parameter '{key}' needs a type annotation, e.g. '{key}: float = param(...)'")
            value.name = key
            params[key] = value
    return params


def lookup(registry: dict[str, Any], what: str, name: str) -> Any:
    """The entry registered under ``name``, or the error that lists the registered names."""
    if name not in registry:
        raise choices_error(what, name, registry)
    return registry[name]


def entry_docs(registry: dict[str, Any], fields: Callable[[Any], Iterable[dataclasses.Field]]) -> list[dict[str, Any]]:
    """Every entry of a registry (``fields`` lists an entry's parameters) with its doc and parameters
    (name, type, default, range, doc): what `ablate augs` and `ablate methods` print."""
    return [
        {
            "name": name,
            "doc": cls.doc,
            "params": [
                {
                    "name": f.name,
                    "type": f.metadata["type"].__name__,
                    "default": f.default,
                    "range": allowed(f),
                    "doc": f.metadata["doc"],
                }
                for f in fields(cls)
            ],
        }
        for name, cls in registry.items()
    ]
