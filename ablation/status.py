"""Human-readable status tables and cost estimates for `ablate grid --dry-run` and `ablate status`."""
from __future__ import annotations

import statistics
from pathlib import Path

from . import store
from .grid import Experiment
from .launch import CellStatus, experiment_dir, totals

# Training images per epoch of the known data sets (folders are counted only when asked).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}


def render(rows: list[CellStatus], limit: int | None = None) -> str:
    """One row per cell (label, id, state, job, elapsed, top-1), then the totals."""
    header = ("label", "id", "state", "job", "elapsed", "linear_top1")
    body = [(r.cell.label + (f" [seed {r.cell.seed}]" if _replicated(rows) else ""), r.cell.id, r.state,
             r.job_id or "-", r.elapsed or "-", f"{100 * r.metric:.1f}%" if r.metric is not None else "-")
            for r in rows]
    shown = body if limit is None or len(body) <= limit else body[:limit]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in (header, *shown)]
    if len(shown) < len(body):
        lines.append(f"... {len(body) - len(shown)} more cells")
    lines.append("total: " + ", ".join(f"{n} {s}" for s, n in totals(rows).items()) + f" (of {len(rows)})")
    return "\n".join(lines)


def _replicated(rows: list[CellStatus]) -> bool:
    return len({r.cell.seed for r in rows}) > 1


def measured_rate(root: Path, exp: Experiment) -> float | None:
    """Median training images/s of this experiment's finished cells."""
    folder = experiment_dir(root, exp)
    rates = [r["images_per_s"] for c in exp.cells
             if (r := store.read_result(folder / c.id)) and r.get("status") == store.FINISHED
             and r.get("images_per_s")]
    return statistics.median(rates) if rates else None


def estimate(root: Path, exp: Experiment, rows: list[CellStatus]) -> str:
    """Cells x epochs x images still to train, and GPU-hours at a measured or configured rate."""
    todo = [r.cell for r in rows if r.state != "done"]
    sizes = [_train_size(c.config) for c in todo]
    if any(s is None for s in sizes):
        return f"cost: {len(todo)} cells to run (image count unknown for data.name=folder)"
    images = sum(s * c.config.train.epochs for s, c in zip(sizes, todo))
    line = f"cost: {len(todo)} cells x epochs x images = {images:,} training images"
    rate, source = measured_rate(root, exp), "measured"
    if rate is None and exp.slurm.images_per_s:
        rate, source = exp.slurm.images_per_s, "configured slurm.images_per_s"
    if rate:
        gpus = max(1, exp.slurm.gpus_per_node)
        line += f"; about {images / rate / 3600 * gpus:.2f} GPU-hours at {rate:,.0f} images/s per cell ({source})"
    else:
        line += "; set slurm.images_per_s (or finish one cell) for a GPU-hour estimate"
    return line


def _train_size(config) -> int | None:
    if config.data.name == "embedded":
        return config.data.n_train
    return TRAIN_SIZES.get(config.data.name)
