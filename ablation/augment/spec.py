"""Augmentation specs: "crop+color(s=0.5)+blur(p=1.0)" or YAML lists, to ops and back.

Grammar: ops joined by '+'; an op is ``name`` or ``name(key=value, ...)`` with scalar values
(true/false, int, float, bare word). A YAML list holds such strings or ``{name: {key: value}}``
mappings. "" and "none" mean no op. The canonical form lists only non-default parameters.

Ops and parameters that were renamed (ablation/registry.py OP_RENAMES) parse under any of their
names; the form cell ids hash spells them as they were first registered, so a rename keeps ids.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from ..errors import choices_error
from ..registry import OP_RENAMES, lookup
from .registry import REGISTRY, Augmentation

_TOKEN = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
SpecLike = str | list | tuple | None


def parse_ops(spec: SpecLike) -> list[Augmentation]:
    """Turn a spec string or YAML list into op instances; bad names or values raise ValueError."""
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "none"):
            return []
        tokens = _split_top(text)
        if not all(t.strip() for t in tokens):
            raise ValueError(
                f"bad augmentation spec '{text}': an empty op (a leading, trailing or doubled '+'); "
                f"join ops with one '+', e.g. 'crop+color'"
            )
        return [_parse_token(t) for t in tokens]
    if isinstance(spec, (list, tuple)):
        return [op for item in spec for op in _parse_item(item)]
    raise ValueError(f"an augmentation spec must be a string or a list, got {type(spec).__name__}: {spec!r}")


def format_spec(ops: Iterable[Augmentation], first_names: bool = False) -> str:
    """Canonical string of a sequence of ops ("none" when empty); ``parse_ops`` reads it back.

    first_names: every op and parameter spelled as it was first registered (the form cell ids hash).
    """
    parts = []
    for op in ops:
        name = OP_RENAMES.first(op.name) if first_names else op.name
        args = ",".join(
            f"{OP_RENAMES.first_param(op.name, key) if first_names else key}={_format_value(value)}"
            for key, value in op.changed().items()
        )
        parts.append(f"{name}({args})" if args else name)
    return "+".join(parts) or "none"


def _parse_item(item: Any) -> list[Augmentation]:
    """One YAML list entry: a spec string or a mapping {name: {param: value} or null}."""
    if isinstance(item, str):
        return parse_ops(item)
    if isinstance(item, dict):
        ops = []
        for name, params in item.items():
            if params is not None and not isinstance(params, dict):
                raise ValueError(f"parameters of '{name}' must be a mapping, got {params!r}")
            ops.append(build_op(str(name), params or {}, token=f"{{{name}: {params}}}"))
        return ops
    raise ValueError(f"bad augmentation list entry {item!r}: use 'name(key=value)' or {{name: {{key: value}}}}")


def _split_top(text: str) -> list[str]:
    """Split on '+' outside parentheses."""
    tokens, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "+" and depth == 0:
            tokens.append(text[start:i])
            start = i + 1
    tokens.append(text[start:])
    return tokens


def _parse_token(token: str) -> Augmentation:
    match = _TOKEN.match(token)
    if match is None:
        raise ValueError(
            f"bad augmentation spec '{token.strip()}': expected name or name(key=value, ...), e.g. 'color(s=0.5)'"
        )
    name, args = match.groups()
    params = {}
    for arg in filter(str.strip, (args or "").split(",")):
        key, eq, value = arg.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"bad argument '{arg.strip()}' in '{token.strip()}': expected key=value")
        if key.strip() in params:
            raise ValueError(f"bad augmentation spec '{token.strip()}': parameter '{key.strip()}' is given twice")
        params[key.strip()] = _scalar(value.strip())
    return build_op(name, params, token=token.strip())


def build_op(name: str, params: dict[str, Any], token: str | None = None) -> Augmentation:
    """Instantiate a registered op under any of its names, naming the offending spec token in every error."""
    token = token or name
    name = OP_RENAMES.current(name)
    cls = lookup(REGISTRY, "augmentation", name)
    fields = [f.name for f in dataclasses.fields(cls)]
    current: dict[str, Any] = {}
    for key, value in params.items():
        renamed = OP_RENAMES.current_param(name, key)
        if renamed not in fields:
            raise choices_error(f"'{name}' parameter", key, fields)
        if renamed in current:
            raise ValueError(f"bad augmentation spec '{token}': parameter '{renamed}' is given twice")
        current[renamed] = value
    try:
        return cls(**current)
    except ValueError as err:
        raise ValueError(f"bad augmentation spec '{token}': {err}") from None


def _scalar(text: str) -> Any:
    """A spec value: true/false, int, float, or a (optionally quoted) word."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'\"")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
