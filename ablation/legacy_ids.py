"""Cells kept under the ids they had before ids named the data by what it is (identity.legacy_signature).

Such a cell's folder is named by an id that hashed data.root as written. Status, skip and resume find
it there while the cell has no folder under its new id (`find`), and a launch moves it to its new id
(`move`, under the launch lock) once nothing runs in it, with its cell.json and config.yaml written
anew, so that it is found from then on wherever the data lies. A cell that still runs, or waits in a
queue, under its old id stays where it is and is found there; a later launch moves it. Moving the data
and upgrading at once loses them: the old id is known only from the old data.root.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import store
from .grid import Cell, Experiment, cell_identity
from .identity import signature


def find(folder: Path, cells: list[Cell]) -> None:
    """Point each cell kept under its legacy id at that folder (its `id` becomes the legacy id), in place."""
    for cell in cells:
        if _legacy_dir(folder, cell) is not None:
            cell.id = str(cell.legacy)


def move(folder: Path, exp: Experiment) -> None:
    """Under the launch lock: rename the folder of each cell kept under its legacy id to the cell's id
    when it is at rest (no process holds its lock, and it has a result or no job record); `find` the rest."""
    for cell in exp.cells:
        old = _legacy_dir(folder, cell)
        if old is not None and _at_rest(old):
            cell.id = signature(cell.config)
            os.rename(old, folder / cell.id)
            store.write_json(folder / cell.id / store.CELL, cell_identity(exp, cell))
            store.write_yaml(folder / cell.id / store.CONFIG, cell.config.to_dict())
    find(folder, exp.cells)


def _legacy_dir(folder: Path, cell: Cell) -> Path | None:
    """The cell's folder under its legacy id, when it has one there and none under its own id."""
    if cell.legacy is None or (folder / signature(cell.config)).exists():
        return None
    return folder / cell.legacy if (folder / cell.legacy / store.CELL).exists() else None


def _at_rest(cell_dir: Path) -> bool:
    return store.lock_holder(cell_dir / store.CELL_LOCK) is None and (
        (cell_dir / store.RESULT).exists() or not (cell_dir / store.JOB).exists()
    )
