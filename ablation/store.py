"""The results layout and atomic file writes.

    results/<experiment>/experiment.json      what the grid is (kind, ops/axes, setup)
    results/<experiment>/<cell-id>/cell.json  identity: id, label, coords, seed
    results/<experiment>/<cell-id>/config.yaml  the fully resolved config
    results/<experiment>/<cell-id>/result.json  written once, at the end: the only proof of done
    results/<experiment>/<cell-id>/metrics.jsonl  one JSON row per trained epoch, rewritten each epoch
    results/<experiment>/<cell-id>/checkpoint.pt, job.json, logs/
    results/<experiment>/tensorboard/<label>,seed=<seed>/  TensorBoard events (when it is installed)

Every write goes to a temporary file in the same folder and is renamed into place,
so a crash or a preemption leaves either the old file or the new one, never half.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

FINISHED = "finished"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FAILED = "failed"
# result.json metrics key: {class name: linear top-1 on that class's test images}
PER_CLASS = "linear_top1_per_class"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call write(fileobj) on a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for the whole group to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=True, default=str))


def write_yaml(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda f: yaml.safe_dump(data, f, sort_keys=False))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist (a half-written file cannot exist)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def result_path(cell_dir: Path) -> Path:
    return Path(cell_dir) / "result.json"


def checkpoint_path(cell_dir: Path) -> Path:
    return Path(cell_dir) / "checkpoint.pt"


def read_result(cell_dir: Path) -> dict | None:
    return read_json(result_path(cell_dir))


def metrics_path(cell_dir: Path) -> Path:
    return Path(cell_dir) / "metrics.jsonl"


def read_metrics(cell_dir: Path) -> list[dict]:
    """The per-epoch rows of a cell, oldest first; [] before its first epoch."""
    try:
        text = metrics_path(cell_dir).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_metrics(cell_dir: Path, rows: list[dict]) -> Path:
    """Replace the whole file (a few hundred short lines at most): readers never see a partial row."""
    return atomic_write(metrics_path(cell_dir),
                        lambda f: f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def tensorboard_dir(cell_dir: Path) -> Path:
    """One TensorBoard run per cell, named by its label, beside the other cells' runs, so that
    `tensorboard --logdir results/<experiment>` compares them; a lone cell keeps its own."""
    cell = read_json(Path(cell_dir) / "cell.json") or {}
    if "label" not in cell:
        return Path(cell_dir) / "tensorboard"
    name = f"{cell['label']},seed={cell.get('seed')}".replace("/", "_")
    return Path(cell_dir).parent / "tensorboard" / name
