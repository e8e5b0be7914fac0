"""What a cell means: the canonical form of its config, its id, and the named settings analysis reads.

The cell id is a hash of the canonical meaning of the resolved config and the schema version:
- augmentation specs count by their canonical form, so `crop+color`, `crop + color` and
  `crop+color(s=1.0)` are one cell; it spells ops and parameters as first registered, so renaming
  one (with its old name in registry.OP_RENAMES) keeps every finished cell's id;
- fields declared `identity=False` in config.py cannot change a result (data.workers,
  data.download, train.checkpoint_every, eval.batch_size, the log section) and are left out;
- where the data lies is no part of it: a data set is named by data.name, an image folder by
  data.fingerprint (its images' names and sizes, ablation/data/fingerprint.py), so moved data keeps
  its cells; only a folder without a fingerprint (not readable where the grid expanded) keeps
  data.root. Ids before fingerprints hashed data.root as written: `legacy_signature` gives them, and
  legacy_ids.py finds the cells kept under them;
- only values that depart from the defaults count (as in dora's signatures): a new option whose
  default keeps the old behaviour leaves every finished cell's id, so a relaunch after an upgrade
  skips them. Changing a default's meaning bumps SCHEMA_VERSION instead. The folder-only keys
  (data.serve, data.stored_size, data.decode, data.classes, data.fingerprint) are such options: at
  their defaults a folder is a resident set at data.size with every class, and other data sets never
  read them.

`settings` flattens the same meaning into dotted keys (loss.temperature) and spells out the ops of
spec-valued keys (augment.views.color.s, augment.views.blur), so analysis is told what a cell is
instead of guessing it from labels or spec strings.

Torch-free for specs without parameters (what `ablate status` needs to find cells fast); a spec
with parameters needs the registry's defaults and types, which imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from typing import Any

from .config import SCHEMA_VERSION, CellConfig
from .names import METHOD_REVISIONS
from .registry import OP_RENAMES


@functools.lru_cache(maxsize=4096)
def canonical_spec(spec: str) -> str:
    """The canonical string of an augmentation spec: the form `format_spec(parse_ops(spec), first_names=True)`
    gives, every op and parameter spelled as first registered, so a rename (registry.OP_RENAMES) keeps ids.

    Without parentheses a spec is only op names joined by '+', whose canonical form is the names
    without spaces; that needs no registry, and so no torch.
    """
    if "(" not in spec:
        ops = [OP_RENAMES.first(token.strip()) for token in spec.split("+")]
        return "none" if spec.strip().lower() in ("", "none") else "+".join(ops)
    from .augment.spec import format_spec, parse_ops

    return format_spec(parse_ops(spec), first_names=True)


REVISION = "_revision"  # in a method's canonical parameters: names.METHOD_REVISIONS (never a parameter name)


def canonical_method_args(method: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Method parameters as the method takes them, without its defaults: `{momentum: 0.996}` (BYOL's
    default) and no parameters are one cell, `{lambd: 1}` and `{lambd: 1.0}` too. Torch-free when
    there are none."""
    revision = {REVISION: METHOD_REVISIONS[method]} if method in METHOD_REVISIONS else {}
    if not args:
        return revision
    from .methods.registry import method_class, resolve_args

    cls = method_class(method)
    return {**revision, **{k: v for k, v in resolve_args(cls, args).items() if v != cls.params[k].default}}


def meaning(section: Any) -> dict[str, Any]:
    """The nested dict of a config (section) that can change a result, specs and method parameters
    in canonical form."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = meaning(value)
        elif not f.metadata.get("identity", True):
            continue
        elif f.metadata.get("spec"):
            out[f.name] = canonical_spec(value)
        elif f.metadata.get("args_of"):
            out[f.name] = canonical_method_args(getattr(section, f.metadata["args_of"]), value)
        else:
            out[f.name] = value
    return out


def departures(cfg: CellConfig) -> dict[str, Any]:
    """The part of the config's meaning that departs from the defaults, nested as the config."""
    return _departures(meaning(cfg), _default_meaning())


@functools.lru_cache(maxsize=1)
def _default_meaning() -> dict[str, Any]:
    return meaning(CellConfig())


def _departures(tree: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`tree` without what equals `defaults`; a mapping value (a section, or method_args whose default is
    None) departs by its entries, so an empty one does not depart."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            default = defaults.get(key)
            if nested := _departures(value, default if isinstance(default, dict) else {}):
                out[key] = nested
        elif key not in defaults or value != defaults[key]:
            out[key] = value
    return out


def signature(cfg: CellConfig) -> str:
    """Short, stable hash of the config's departures from the defaults and the schema version: the
    cell's id. Where the data lies is no part of it: a data set is named by data.name, a folder by its
    data.fingerprint; only a folder without one (never read where the cell was made) keeps data.root."""
    tree = departures(cfg)
    data = tree.get("data", {})
    if "root" in data and not (cfg.data.name == "folder" and cfg.data.fingerprint is None):
        tree["data"] = {k: v for k, v in data.items() if k != "root"}
    return _hash(tree)


def legacy_signature(cfg: CellConfig) -> str | None:
    """The id that ids before fingerprints gave this config (data.root hashed as written, no
    data.fingerprint), when it differs from `signature`: the id its finished cells are kept under."""
    tree = departures(cfg)
    if "data" in tree:
        tree["data"] = {k: v for k, v in tree["data"].items() if k != "fingerprint"}
    old = _hash(tree)
    return None if old == signature(cfg) else old


def _hash(tree: dict[str, Any]) -> str:
    blob = json.dumps({"schema": SCHEMA_VERSION, "config": {k: v for k, v in tree.items() if v != {}}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def spec_keys(cls: type = CellConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose values are augmentation specs (augment.views, augment.base)."""
    keys = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            keys += spec_keys(typing.cast(type, f.default_factory), f"{prefix}{f.name}.")
        elif f.metadata.get("spec"):
            keys.append(prefix + f.name)
    return keys


def settings(cfg: CellConfig, expand: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The config's meaning as {dotted key: value}; each spec key in `expand` is spelled out as
    `<key>.<op>: true|false` for every registered op and `<key>.<op>.<param>: value` for every
    parameter of the ops it has (so a missing blur reads `augment.views.blur: false`)."""
    flat = _flatten(meaning(cfg))
    if expand:
        from .augment import REGISTRY, parse_spec
    for key in expand:
        ops = parse_spec(flat[key]).ops
        flat.update({f"{key}.{name}": any(op.name == name for op in ops) for name in REGISTRY})
        for op in ops:
            flat.update({f"{key}.{op.name}.{f.name}": getattr(op, f.name) for f in dataclasses.fields(op)})
    return flat


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out
