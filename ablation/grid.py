"""Experiments: a YAML file expands into cells (pairwise over augmentations, or a product of keys).

An experiment file holds
    name, title, paper      what it is (paper: figure5 | table1 | table4 | table5 | figure8 | tableB1)
    cell                    the base cell config (see `ablate run --help` for every key)
    presets                 named overrides of `cell` (one is chosen): presets.yaml's names;
                            they extend presets.yaml beside the file; a preset may also
                            override keys of the grid section (e.g. its ops) and of the slurm section
    preset                  the default preset
    grid                    kind: pairwise (ops: [...], optional axes: facets such as {method: [...]})
                            or product (axes: {key: [values]}), seeds: [...]
    figure                  optional: how analysis draws a product grid (kind: budget, see FIGURE_KEYS);
                            a preset may override it, as it may the grid
    slurm                   resources for `ablate grid --executor slurm` (ablation.slurm.config)
A cell whose method has a recipe for the preset in methods.yaml (beside presets.yaml) gets it on top
of the preset, below everything else. The whole experiment is resolved and validated before anything runs.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CellConfig, from_dict, merge, read_yaml, set_dotted, validate
from .data.fingerprint import identify
from .errors import did_you_mean
from .identity import legacy_signature, settings, signature, spec_keys
from .names import GRID_KINDS, PAPER_TABLES, pair_spec
from .registered import check_registered
from .slurm.config import SlurmConfig, read_slurm
from .store import check_name

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
DEFAULT_EXPERIMENT = "pairwise"
SHARED_FILES = ("presets", "methods")  # experiments/*.yaml that every experiment reads; not experiments
DEFAULT_METHOD = CellConfig.method
SEED_KEY = "train.seed"  # replicates differ in it; it is never a swept setting
# figure kind -> the keys it needs: which swept key is the budget (x), the lines (hue) and the panels
# (facet), and which hue values are compositions and which single ops (analysis never guesses them)
FIGURE_KEYS = {"budget": ("x", "hue", "facet", "compositions", "singles")}


@dataclass
class Cell:
    id: str
    label: str
    coords: dict
    seed: int
    config: CellConfig
    legacy: str | None = None  # its id before ids fingerprinted the data (identity.legacy_signature)


@dataclass
class Experiment:
    name: str
    title: str
    paper: str | None
    kind: str
    preset: str
    ops: list
    axes: list
    cells: list
    slurm: SlurmConfig
    path: Path
    figure: dict | None = None

    def describe(self) -> dict:
        """The experiment.json that analysis reads: what the grid is and what it swept, not how it runs.

        `swept`: the settings (dotted keys, see identity.settings) that differ between cells, the
        axes first and then what they imply (a swept spec spelled out: augment.views.color.s);
        `settings`: each cell's values of them; `fixed`: the settings every cell shares.
        Imports torch when a swept spec has to be spelled out (the registry knows the ops).
        """
        expand = [key for key in self.axes if key in spec_keys()]
        per_cell = {cell.id: settings(cell.config, expand) for cell in self.cells}
        keys = list(dict.fromkeys(key for values in per_cell.values() for key in values))

        def values(key: str) -> set[str]:
            return {json.dumps(v[key], sort_keys=True) for v in per_cell.values() if key in v}

        swept = [
            k for k in dict.fromkeys([*self.axes, *keys]) if k in self.axes or (k != SEED_KEY and len(values(k)) > 1)
        ]
        first = next(iter(per_cell.values()))
        fixed = {
            k: first[k]
            for k in keys
            if k not in swept and all(k in v for v in per_cell.values()) and len(values(k)) == 1
        }
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "paper": self.paper,
            "preset": self.preset,
            "ops": self.ops,
            "axes": self.axes,
            "swept": swept,
            "fixed": fixed,
            "settings": {cid: {k: v[k] for k in swept if k in v} for cid, v in per_cell.items()},
            "figure": self.figure,
            "cells": [cell.id for cell in self.cells],
        }


def find_experiment(name_or_path: str | None) -> Path:
    """A path, or a name looked up in ./experiments and then in the project's experiments/."""
    name = name_or_path or DEFAULT_EXPERIMENT
    candidates = [Path(name)] + [d / f"{name}.yaml" for d in (Path("experiments"), EXPERIMENTS_DIR)]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem not in SHARED_FILES)
    raise FileNotFoundError(
        f"experiment '{name}' not found{did_you_mean(name, known)}; give a YAML path or one of: {', '.join(known)}"
    )


def _check_keys(where: str, data: dict, allowed: tuple) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown key '{key}'{did_you_mean(key, allowed)}; choose from: {', '.join(allowed)}"
            )


def _grid_points(grid: dict, where: str) -> tuple[str, list, list, list[tuple[str, dict, dict]]]:
    """(kind, ops, axes, [(label, coords, overrides)]) for a grid section."""
    kind = grid.get("kind")
    if kind == "pairwise":
        _check_keys(where, grid, ("kind", "ops", "axes", "seeds"))
        ops = _ops(where, grid.get("ops"))
        pairs = [
            (pair_spec(a, b), {"first": a, "second": b}, {"augment": {"views": pair_spec(a, b)}})
            for a in ops
            for b in ops
        ]
        if not grid.get("axes"):
            return kind, ops, [], pairs
        facets, points = _product(where, grid["axes"]), []
        for facet_label, facet_coords, facet_overrides in facets[1]:
            points += [
                (f"{label},{facet_label}", {**coords, **facet_coords}, merge(overrides, facet_overrides))
                for label, coords, overrides in pairs
            ]
        return kind, ops, facets[0], points
    if kind == "product":
        _check_keys(where, grid, ("kind", "axes", "seeds"))
        names, points = _product(where, grid.get("axes"))
        return kind, [], names, points
    raise ValueError(
        f"{where}.kind: '{kind}' is not allowed{did_you_mean(kind, GRID_KINDS)}; choose from: {', '.join(GRID_KINDS)}"
    )


def _ops(where: str, ops: Any) -> list[str]:
    """A pairwise grid's ops: a non-empty list of non-empty augmentation specs ('none' for no op)."""
    if not isinstance(ops, list) or not ops:
        raise ValueError(
            f"{where}.ops: a pairwise grid needs a non-empty list of augmentation specs, "
            f"got {ops!r}; e.g. ops: [crop, color]"
        )
    for i, op in enumerate(ops, 1):
        if op is None or isinstance(op, (dict, list)) or not str(op).strip():
            raise ValueError(
                f"{where}.ops: entry {i} ({op!r}) is not an augmentation spec; "
                f"write a spec such as 'crop' or 'color(s=0.5)', or 'none' for no augmentation"
            )
    return [str(op) for op in ops]


def _section(spec: dict, key: str) -> dict:
    """A mapping section of the experiment file (cell, presets, grid, figure, slurm); {} when absent."""
    value = spec.get(key)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{key}: expected a mapping of keys, got {value!r}")
    return value or {}


def _product(where: str, axes: Any) -> tuple[list[str], list[tuple[str, dict, dict]]]:
    """(swept keys, [(label, coords, overrides)]) for every combination of the axes' values."""
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"{where}.axes: expected a mapping of key: [values]")
    names = [[k.strip() for k in key.split(",")] for key in axes]
    points = []
    for combo in itertools.product(*[_axis_values(where, key, vals) for key, vals in axes.items()]):
        coords = {k: v for keys, vals in zip(names, combo) for k, v in zip(keys, vals)}
        label = ",".join(f"{_short(k)}={_fmt(v)}" for k, v in coords.items())
        overrides: dict = {}
        for k, v in coords.items():
            overrides = merge(overrides, _nested(k, v))
        points.append((label, coords, overrides))
    return [k for keys in names for k in keys], points


def _axis_values(where: str, key: str, values: Any) -> list[tuple]:
    width = len(key.split(","))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}.axes.{key}: expected a non-empty list of values, got {values!r}")
    rows = [tuple(v) if width > 1 else (v,) for v in values]
    if any(len(r) != width for r in rows):
        raise ValueError(f"{where}.axes.{key}: zipped keys need lists of {width} values each")
    return rows


def _nested(key: str, value: Any) -> dict:
    """{"loss": {"temperature": 0.5}} from "loss.temperature", 0.5 (the value keeps its YAML type)."""
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _short(key: str) -> str:
    """The label name of a swept key: its leaf (temperature), or its section for `*.name` (loss)."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def load_experiment(
    name_or_path: str | None = None, preset: str | None = None, overrides: tuple | list = (), check: bool = True
) -> Experiment:
    """Read, expand and validate an experiment; every error names the file and the key.

    check=False skips the cross-field checks (augmentation specs parse, ...) that import torch:
    keys, types and ranges are still checked, and cell ids do not depend on it (`ablate status`).
    """
    path = find_experiment(name_or_path)
    spec = read_yaml(path)  # its errors name the file already
    try:
        return _expand(path, spec, preset, list(overrides), check)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _expand(path: Path, spec: dict, preset: str | None, overrides: list, check: bool) -> Experiment:
    _check_keys("experiment", spec, ("name", "title", "paper", "cell", "presets", "preset", "grid", "figure", "slurm"))
    shared, own = _shared(path, "presets"), _section(spec, "presets")
    presets = merge(shared, own)
    preset = preset or spec.get("preset") or (next(iter(presets)) if presets else "default")
    if presets and preset not in presets:
        raise ValueError(
            f"preset '{preset}' is not defined{did_you_mean(preset, presets)}; choose from: {', '.join(presets)}"
        )
    paper = spec.get("paper")
    if paper is not None and paper not in PAPER_TABLES:
        raise ValueError(
            f"paper: '{paper}' is not allowed{did_you_mean(paper, PAPER_TABLES)}; "
            f"choose from: {', '.join(PAPER_TABLES)}"
        )
    # precedence: shared preset < the cell's method recipe < the experiment's cell < the experiment's
    # own preset < the grid point < --set
    chosen, shared_chosen = dict(own.get(preset) or {}), dict(shared.get(preset) or {})
    grid = merge(_section(spec, "grid"), chosen.pop("grid", None) or {})
    slurm_tree = merge(
        merge(shared_chosen.pop("slurm", None) or {}, _section(spec, "slurm")), chosen.pop("slurm", None) or {}
    )
    figure = merge(_section(spec, "figure"), chosen.pop("figure", None) or {}) or None
    below, above = shared_chosen, merge(_section(spec, "cell"), chosen)
    recipes = _shared(path, "methods")
    cell_tree = dict[str, Any]()
    for assignment in overrides:  # parsed once, not once per cell
        if assignment.startswith("slurm."):
            set_dotted(slurm_tree, assignment.removeprefix("slurm."))
        else:
            set_dotted(cell_tree, assignment)
    slurm = read_slurm(slurm_tree)
    kind, ops, axes, points = _grid_points(grid, "grid")
    _check_figure(figure, axes)
    seeds = grid.get("seeds") or [None]
    if not isinstance(seeds, list) or not all(s is None or isinstance(s, int) for s in seeds):
        raise ValueError(f"grid.seeds: expected a list of integers, got {seeds!r}")
    cells, seen, prints = [], set(), dict[str, str | None]()
    for seed in seeds:
        for label, coords, point in points:
            tree = merge(merge(above, point), cell_tree)
            if seed is not None:
                tree = merge(tree, {"train": {"seed": seed}})
            method = tree.get("method", below.get("method", DEFAULT_METHOD))
            tree = merge(merge(below, _recipe(recipes, method, preset)), tree)
            try:
                config = from_dict(CellConfig, tree)
                if check:
                    validate(config, check_registered)
                config = identify(config, prints)
            except ValueError as err:
                raise ValueError(f"cell '{label}': {err}") from None
            cell = Cell(signature(config), label, coords, config.train.seed, config, legacy_signature(config))
            if cell.id in seen:
                raise ValueError(f"cell '{label}' (seed {cell.seed}) duplicates another cell")
            seen.add(cell.id)
            cells.append(cell)
    name = check_name(str(spec.get("name") or path.stem))
    check_name(preset, "preset name")
    return Experiment(
        name=f"{name}-{preset}",
        title=str(spec.get("title") or name),
        paper=paper,
        kind=kind,
        preset=preset,
        ops=ops,
        axes=axes,
        cells=cells,
        slurm=slurm,
        path=path,
        figure=figure,
    )


def _check_figure(figure: dict | None, axes: list) -> None:
    """The figure section names a known kind, all of its keys, swept keys and swept hue values."""
    if figure is None:
        return
    kind = figure.get("kind")
    if kind not in FIGURE_KEYS:
        raise ValueError(
            f"figure.kind: '{kind}' is not allowed{did_you_mean(str(kind), FIGURE_KEYS)}; "
            f"choose from: {', '.join(FIGURE_KEYS)}"
        )
    needed = FIGURE_KEYS[kind]
    _check_keys("figure", figure, ("kind",) + needed)
    missing = [k for k in needed if k not in figure]
    if missing:
        raise ValueError(f"figure: kind '{kind}' needs {', '.join(missing)}")
    for role in ("x", "hue", "facet"):
        if figure[role] not in axes:
            raise ValueError(f"figure.{role}: '{figure[role]}' is not a swept key; swept: {', '.join(axes)}")


def preset_names() -> list[str]:
    """The project's shared presets (experiments/presets.yaml), for help texts."""
    return list(_shared(EXPERIMENTS_DIR / "presets.yaml", "presets"))


def _shared(path: Path, name: str) -> dict:
    """<name>.yaml beside the experiment (else the project's): presets (the data/model settings all
    share) or methods (each method's recipe per preset)."""
    for folder in (path.parent, EXPERIMENTS_DIR):
        if (folder / f"{name}.yaml").is_file():
            return read_yaml(folder / f"{name}.yaml")
    return {}


def _recipe(recipes: dict, method: Any, preset: str) -> dict:
    """The cell overrides methods.yaml gives `method` on `preset` ({} when it gives none)."""
    entry = recipes.get(method) if isinstance(method, str) else None
    recipe = entry.get(preset) if isinstance(entry, dict) else entry
    if recipe is not None and not isinstance(recipe, dict):
        raise ValueError(f"methods.yaml: {method}.{preset}: expected a mapping of cell keys, got {recipe!r}")
    return recipe or {}


def cell_identity(exp: Experiment, cell: Cell) -> dict:
    """cell.json: who this cell is within its experiment."""
    return {"id": cell.id, "experiment": exp.name, "label": cell.label, "coords": cell.coords, "seed": cell.seed}
