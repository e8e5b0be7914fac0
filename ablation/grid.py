"""Experiments: a YAML file expands into cells (pairwise over augmentations, or a product of keys).

An experiment file holds
    name, title, paper      what it is (paper: figure5 | table1 | table4 | table5 | figure8 | tableB1)
    cell                    the base cell config (see `ablate run --help` for every key)
    presets                 named overrides of `cell`: embedded | cifar10 | imagenet | imagenet100 (one is
                            chosen); they extend presets.yaml beside the file; a preset may also
                            override keys of the grid section (e.g. its ops) and of the slurm section
    preset                  the default preset
    grid                    kind: pairwise (ops: [...]) or product (axes: {key: [values]}), seeds: [...]
    slurm                   resources for `ablate grid --executor slurm`
The whole experiment is resolved and validated before anything runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import CellConfig, from_dict, merge, opt, read_yaml, set_dotted, signature, validate
from .errors import did_you_mean

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
DEFAULT_EXPERIMENT = "pairwise"
PAPER_TABLES = ("figure5", "table1", "table4", "table5", "figure8", "tableB1")


@dataclass
class SlurmConfig:
    partition: Optional[str] = opt(None, "partition (none: the cluster's default)")
    gpus_per_node: int = opt(1, "GPUs per cell", low=0, high=64)
    tasks_per_node: int = opt(1, "processes per cell; > 1 runs DDP with gathered negatives", low=1, high=64)
    cpus_per_task: int = opt(8, "CPUs per process", low=1, high=1024)
    mem_gb: Optional[int] = opt(None, "memory per cell in GB (none: the partition's default)", low=1)
    timeout_min: int = opt(240, "time limit per job; a cell that hits it checkpoints and requeues", low=1)
    account: Optional[str] = opt(None, "Slurm account")
    qos: Optional[str] = opt(None, "quality of service")
    constraint: Optional[str] = opt(None, "node features, e.g. a100")
    array_parallelism: int = opt(64, "how many cells of one launch run at once", low=1)
    signal_delay_s: int = opt(120, "seconds before the time limit when Slurm sends USR2", low=10)
    max_requeues: int = opt(10, "time-limit requeues before a cell gives up", low=0)
    images_per_s: Optional[float] = opt(None, "throughput of one cell, for --dry-run estimates before any cell ran",
                                        low=0.0)
    extra: Optional[dict] = opt(None, "extra sbatch parameters, e.g. {exclude: node3}")


@dataclass
class Cell:
    id: str
    label: str
    coords: dict
    seed: int
    config: CellConfig


@dataclass
class Experiment:
    name: str
    title: str
    paper: Optional[str]
    kind: str
    preset: str
    ops: list
    axes: list
    cells: list
    slurm: SlurmConfig
    path: Path

    def describe(self) -> dict:
        """The experiment.json that analysis reads (what the grid is, not how it runs)."""
        c = self.cells[0].config
        setup = {"data": c.data.name, "size": c.data.size, "model": c.model.encoder, "epochs": c.train.epochs,
                 "batch_size": c.train.batch_size, "mode": c.augment.mode, "base": c.augment.base,
                 "views": c.augment.views if self.kind == "product" else None, "loss": c.loss.name,
                 "lr_scaling": c.optim.lr_scaling}
        return {"name": self.name, "title": self.title, "kind": self.kind, "paper": self.paper,
                "preset": self.preset, "ops": self.ops, "axes": self.axes, "setup": setup,
                "cells": [cell.id for cell in self.cells]}


def find_experiment(name_or_path: str | None) -> Path:
    """A path, or a name looked up in ./experiments and then in the project's experiments/."""
    name = name_or_path or DEFAULT_EXPERIMENT
    candidates = [Path(name)] + [d / f"{name}.yaml" for d in (Path("experiments"), EXPERIMENTS_DIR)]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem != "presets")
    raise FileNotFoundError(f"experiment '{name}' not found{did_you_mean(name, known)}; "
                            f"give a YAML path or one of: {', '.join(known)}")


def _check_keys(where: str, data: dict, allowed: tuple) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key '{key}'{did_you_mean(key, allowed)}; "
                             f"choose from: {', '.join(allowed)}")


def _grid_points(grid: dict, where: str) -> tuple[str, list, list, list[tuple[str, dict, dict]]]:
    """(kind, ops, axes, [(label, coords, overrides)]) for a grid section."""
    kind = grid.get("kind")
    if kind == "pairwise":
        _check_keys(where, grid, ("kind", "ops", "seeds"))
        ops = [str(op) for op in grid.get("ops") or []]
        if not ops:
            raise ValueError(f"{where}.ops: a pairwise grid needs a non-empty list of augmentation specs")
        points = [(a if a == b else f"{a}+{b}", {"first": a, "second": b},
                   {"augment": {"views": a if a == b else f"{a}+{b}"}}) for a in ops for b in ops]
        return kind, ops, [], points
    if kind == "product":
        _check_keys(where, grid, ("kind", "axes", "seeds"))
        axes = grid.get("axes") or {}
        if not isinstance(axes, dict) or not axes:
            raise ValueError(f"{where}.axes: a product grid needs a mapping of key: [values]")
        names = [[k.strip() for k in key.split(",")] for key in axes]
        points = []
        for combo in itertools.product(*[_axis_values(where, key, vals) for key, vals in axes.items()]):
            coords = {k: v for keys, vals in zip(names, combo) for k, v in zip(keys, vals)}
            label = ",".join(f"{_short(k)}={_fmt(v)}" for k, v in coords.items())
            overrides: dict = {}
            for k, v in coords.items():
                overrides = merge(overrides, _nested(k, v))
            points.append((label, coords, overrides))
        return kind, [], [k for keys in names for k in keys], points
    raise ValueError(f"{where}.kind: '{kind}' is not allowed{did_you_mean(kind, ('pairwise', 'product'))}; "
                     f"choose from: pairwise, product")


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


def load_experiment(name_or_path: str | None = None, preset: str | None = None,
                    overrides: tuple | list = (), check: bool = True) -> Experiment:
    """Read, expand and validate an experiment; every error names the file and the key.

    check=False skips the cross-field checks (augmentation specs parse, ...) that import torch:
    keys, types and ranges are still checked, and cell ids do not depend on it (`ablate status`).
    """
    path = find_experiment(name_or_path)
    try:
        return _expand(path, read_yaml(path), preset, list(overrides), check)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _expand(path: Path, spec: dict, preset: str | None, overrides: list, check: bool) -> Experiment:
    _check_keys("experiment", spec, ("name", "title", "paper", "cell", "presets", "preset", "grid", "slurm"))
    shared, own = _shared_presets(path), spec.get("presets") or {}
    presets = merge(shared, own)
    preset = preset or spec.get("preset") or (next(iter(presets)) if presets else "default")
    if presets and preset not in presets:
        raise ValueError(f"preset '{preset}' is not defined{did_you_mean(preset, presets)}; "
                         f"choose from: {', '.join(presets)}")
    paper = spec.get("paper")
    if paper is not None and paper not in PAPER_TABLES:
        raise ValueError(f"paper: '{paper}' is not allowed{did_you_mean(paper, PAPER_TABLES)}; "
                         f"choose from: {', '.join(PAPER_TABLES)}")
    # precedence: shared preset < the experiment's cell < the experiment's own preset < --set
    chosen, shared_chosen = dict(own.get(preset) or {}), dict(shared.get(preset) or {})
    grid = merge(spec.get("grid") or {}, chosen.pop("grid", None) or {})
    slurm_tree = merge(merge(shared_chosen.pop("slurm", None) or {}, spec.get("slurm") or {}),
                       chosen.pop("slurm", None) or {})
    base = merge(merge(shared_chosen, spec.get("cell") or {}), chosen)
    cell_tree: dict = {}
    for assignment in overrides:  # parsed once, not once per cell
        if assignment.startswith("slurm."):
            set_dotted(slurm_tree, assignment.removeprefix("slurm."))
        else:
            set_dotted(cell_tree, assignment)
    slurm = from_dict(SlurmConfig, slurm_tree, "slurm.")
    kind, ops, axes, points = _grid_points(grid, "grid")
    seeds = grid.get("seeds") or [None]
    if not isinstance(seeds, list) or not all(s is None or isinstance(s, int) for s in seeds):
        raise ValueError(f"grid.seeds: expected a list of integers, got {seeds!r}")
    cells, seen = [], set()
    for seed in seeds:
        for label, coords, point in points:
            tree = merge(merge(base, point), cell_tree)
            if seed is not None:
                tree = merge(tree, {"train": {"seed": seed}})
            try:
                config = from_dict(CellConfig, tree)
                if check:
                    validate(config)
            except ValueError as err:
                raise ValueError(f"cell '{label}': {err}") from None
            cell = Cell(signature(config), label, coords, config.train.seed, config)
            if cell.id in seen:
                raise ValueError(f"cell '{label}' (seed {cell.seed}) duplicates another cell")
            seen.add(cell.id)
            cells.append(cell)
    name = str(spec.get("name") or path.stem)
    return Experiment(name=f"{name}-{preset}", title=str(spec.get("title") or name), paper=paper, kind=kind,
                      preset=preset, ops=ops, axes=axes, cells=cells, slurm=slurm, path=path)


def _shared_presets(path: Path) -> dict:
    """presets.yaml beside the experiment (else the project's): the data/model settings all share."""
    for folder in (path.parent, EXPERIMENTS_DIR):
        if (folder / "presets.yaml").is_file():
            return read_yaml(folder / "presets.yaml")
    return {}


def cell_identity(exp: Experiment, cell: Cell) -> dict:
    """cell.json: who this cell is within its experiment."""
    return {"id": cell.id, "experiment": exp.name, "label": cell.label, "coords": cell.coords, "seed": cell.seed}


def slurm_parameters(slurm: SlurmConfig) -> dict:
    """submitit executor parameters from the slurm section."""
    params = {"slurm_partition": slurm.partition, "gpus_per_node": slurm.gpus_per_node or None,
              "tasks_per_node": slurm.tasks_per_node, "cpus_per_task": slurm.cpus_per_task,
              "timeout_min": slurm.timeout_min, "slurm_account": slurm.account, "slurm_qos": slurm.qos,
              "slurm_constraint": slurm.constraint, "slurm_array_parallelism": slurm.array_parallelism,
              "slurm_signal_delay_s": slurm.signal_delay_s, "slurm_additional_parameters": slurm.extra,
              "mem_gb": slurm.mem_gb, "nodes": 1}
    return {k: v for k, v in params.items() if v is not None}

