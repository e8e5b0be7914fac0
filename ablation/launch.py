"""Launch an experiment's cells locally or on Slurm, each exactly once.

Launches take an exclusive lock on the experiment folder while they decide what to run and
record it (a Slurm job.json, or a local claim with the process id), so concurrent launches
never start a cell twice. The cells then run on this machine (ablation.local) or as Slurm jobs
(ablation.slurm), which checkpoint and requeue on preemption.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from . import legacy_ids, sizing, store
from .config import CellConfig
from .data.folders import check as check_folder
from .data.folders import classes_key
from .grid import Experiment, cell_identity
from .local import run_local
from .names import EXECUTORS, RETRYABLE, TODO
from .slurm.submit import controller_answers, submit
from .status import CellStatus, statuses, totals


def prepare(root: Path, exp: Experiment) -> Path:
    """Write experiment.json and each cell's identity and config (idempotent)."""
    folder = store.experiment_dir(root, exp.name)
    store.write_json(folder / store.EXPERIMENT, exp.describe())
    for cell in exp.cells:
        d = folder / cell.id
        if not (d / store.CELL).exists():
            store.write_json(d / store.CELL, cell_identity(exp, cell))
            store.write_yaml(d / store.CONFIG, cell.config.to_dict())
    return folder


def select(rows: list[CellStatus], retry: bool) -> list[CellStatus]:
    """Cells to launch now: never done or in-flight ones; failed or corrupt ones only on retry."""
    return [r for r in rows if r.state == TODO or (retry and r.state in RETRYABLE)]


def retire(folder: Path, row: CellStatus) -> None:
    """Move a failed attempt's result and job record, and a corrupt cell's unreadable files, to
    attempts/ so the cell can run again (from its checkpoint, or from scratch without one)."""
    store.retire(folder / row.cell.id, [store.RESULT, store.JOB, *row.files])


def pick_executor(name: str, log: Callable[[str], None] = print) -> str:
    """auto: Slurm when `sbatch` is on PATH and the controller answers, else local; says which and why."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor '{name}'; choose from: {', '.join(EXECUTORS)}")
    if name != "auto":
        return name
    if not shutil.which("sbatch"):
        chosen, why = "local", "no sbatch on PATH"
    elif controller_answers():
        chosen, why = "slurm", "sbatch is on PATH and the Slurm controller answers (sinfo)"
    else:
        chosen, why = "local", "sbatch is installed but no Slurm controller answers (sinfo)"
    log(f"executor auto: {chosen} ({why}; choose with --executor local|slurm)")
    return chosen


def launch(
    root: Path,
    exp: Experiment,
    executor: str = "auto",
    retry: bool = False,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare the results folder and start every cell that needs to run; returns what happened.

    The allocation of Slurm cells (sizing.check) and image folders are checked first (one-line errors), so a
    cell that cannot fit its GPUs is never submitted and a bad data.root fails no cell."""
    executor = pick_executor(executor, log)
    if executor == "slurm":
        sizing.check(exp)
    for root_dir, classes, per_class in {key for c in exp.cells if (key := _folder_key(c.config)) is not None}:
        check_folder(root_dir, classes, per_class)
    folder = store.experiment_dir(root, exp.name)
    with store.locked(folder / store.LAUNCH_LOCK):
        legacy_ids.move(folder, exp)
        prepare(root, exp)
        rows = statuses(root, exp)
        chosen_rows = select(rows, retry)
        for row in chosen_rows:
            if row.state != TODO:
                retire(folder, row)
        cells = [r.cell for r in chosen_rows]
        chosen = {c.id for c in cells}
        skipped = totals([r for r in rows if r.cell.id not in chosen])
        log(
            f"{exp.name}: {len(exp.cells)} cells; launching {len(cells)} ({executor})"
            + (f"; skipping {', '.join(f'{n} {s}' for s, n in skipped.items())}" if skipped else "")
        )
        if executor == "slurm":
            return {"executor": executor, "submitted": submit(root, exp, cells) if cells else []}
    return {"executor": executor, "ran": run_local(root, exp, workers, log)}


def _folder_key(config: CellConfig) -> tuple | None:
    """(root, classes, per_class) of a folder cell, hashable; None for other data sets."""
    d = config.data
    if d.name != "folder":
        return None
    return d.root, classes_key(d.classes), d.per_class
