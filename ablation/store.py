"""The results layout, atomic file writes, locks, and reading the layout's files back.

    results/<experiment>/experiment.json      what the grid is (kind, ops/axes, swept and fixed settings)
    results/<experiment>/<cell-id>/cell.json  identity: id, experiment, label, coords, seed
    results/<experiment>/<cell-id>/config.yaml  the fully resolved config
    results/<experiment>/<cell-id>/result.json  written once, at the end: the only proof of done

Every file name of the layout is defined here and nowhere else. Every write goes to a temporary
file in the same folder and is renamed into place, so a crash or a preemption leaves either the
old file or the new one, never half. A file that is unreadable all the same (a disk filled up, a
hand edit) raises `Corrupt`, naming it, so one bad cell never takes a whole grid down with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from .names import CORRUPT, EPOCH, FAILED, FINISHED, WALL_S

EXPERIMENT, CELL, CONFIG, RESULT, CHECKPOINT, JOB = (
    "experiment.json",
    "cell.json",
    "config.yaml",
    "result.json",
    "checkpoint.pt",
    "job.json",
)
ATTEMPTS, SUBMITIT, LAUNCH_LOCK, CELL_LOCK = "attempts", ".submitit", ".launch.lock", ".cell.lock"
METRICS_LOG, TENSORBOARD = "metrics.jsonl", "tensorboard"
CORRECT = "correct.npz"  # per test image, packed bits: did each probe classify it right (paired intervals)
SUMMARY, SUMMARY_AGG, REPORT, FIGURES = "summary.csv", "summary_agg.csv", "report.md", "figures"
REPORT_HTML, TABLES_TEX, WANDB = "report.html", "tables.tex", "wandb"
RESULT_STATUSES = (FINISHED, FAILED, CORRUPT)
# One path component that is safe on every file system: no separators, no "..", no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class Corrupt(ValueError):
    """A file of the results layout exists but cannot be read; `path` names it."""

    def __init__(self, path: Path, why: str):
        self.path = Path(path)
        super().__init__(f"{path}: {why}")


def check_name(name: str, what: str = "experiment name") -> str:
    """`name` as one folder under --results, or a ValueError that says what is allowed."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            f"(no path separators, no '..', at most 128 characters, starting with a letter or digit)"
        )
    return name


def experiment_dir(root: Path, name: str) -> Path:
    """results/<experiment>: always a direct child of the results root."""
    return Path(root) / check_name(name)


# ---------------------------------------------------------------- writing


def atomic_write(path: Path, write: Callable[[IO[Any]], object], mode: str = "w") -> Path:
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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_cause(err)
        if cause is not None and (cause is not err or cause.filename is None):
            raise OSError(cause.errno, cause.strerror, str(path)) from None  # name the file being written
        raise
    return path


def _os_cause(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`, itself or in its chain: a full disk surfaces from torch.save as a
    RuntimeError ("unexpected pos ...") whose context is the OSError, and a failed write names no file."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def write_json(path: Path, data: Any) -> Path:
    """Strict JSON: a non-finite float (a diverged cell's loss) is written as null, which every
    reader parses; the record's reason says why."""
    return atomic_write(
        path, lambda f: json.dump(_finite(data), f, indent=2, sort_keys=True, default=str, allow_nan=False)
    )


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def write_yaml(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda f: yaml.safe_dump(data, f, sort_keys=False))


def write_correct(path: Path, correct: dict[str, Any]) -> Path:
    """Per-test-image correctness of each probe ({probe: bool vector}), packed eight images a byte with
    the vector's length: 1,000,000 test images take 125 kB a probe."""
    arrays: dict[str, Any] = {}
    for probe, hits in correct.items():
        hits = np.asarray(hits, dtype=bool)
        arrays[probe], arrays[f"{probe}.n"] = np.packbits(hits), np.array(len(hits))
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), mode="wb")


def read_correct(path: Path) -> dict[str, np.ndarray] | None:
    """What `write_correct` wrote (None when the file is absent: cells finished before it existed);
    `Corrupt` when it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {
                k: np.unpackbits(data[k])[: int(data[f"{k}.n"])].astype(bool)
                for k in data.files
                if not k.endswith(".n")
            }
    except Exception as err:  # noqa: BLE001 - truncated, or not ours: name the file
        raise Corrupt(path, f"cannot be read ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- reading


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist; `Corrupt` when it cannot be parsed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise Corrupt(path, f"unreadable ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Corrupt(path, "empty file" if not text.strip() else f"not valid JSON ({err})") from None


def read_record(path: Path) -> dict | None:
    """A JSON object of the layout (cell.json, job.json, experiment.json), or None when missing."""
    data = read_json(path)
    if data is not None and not isinstance(data, dict):
        raise Corrupt(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_result(cell_dir: Path) -> dict | None:
    """A cell's result.json, checked to carry a known status; None when the cell has none."""
    path = Path(cell_dir) / RESULT
    result = read_record(path)
    if result is not None and result.get("status") not in RESULT_STATUSES:
        raise Corrupt(path, f"status {result.get('status')!r} is not one of {', '.join(RESULT_STATUSES)}")
    return result


def read_job(cell_dir: Path) -> dict | None:
    return read_record(Path(cell_dir) / JOB)


def retire(cell_dir: Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Move these files of a cell to attempts/<time>-<name> (kept for the record); returns where."""
    cell_dir, stamp, moved = Path(cell_dir), time.strftime("%Y%m%d-%H%M%S"), []
    for name in dict.fromkeys(names):
        if (cell_dir / name).exists():
            (cell_dir / ATTEMPTS).mkdir(exist_ok=True)
            moved.append(cell_dir / ATTEMPTS / f"{stamp}-{name}")
            os.replace(cell_dir / name, moved[-1])
    return moved


# ---------------------------------------------------------------- locks


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, for reading and writing, created when missing. A symlink is not
    followed (a launch would overwrite the file it points to) and a file that is not a lone regular
    file (a FIFO, a hard link to another file) is refused: anyone who can write into a shared results
    folder could otherwise make another user's launch clobber that user's files. Truncated only once held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise ValueError(
            f"{path}: the lock file is a symbolic link; refusing to follow it (remove it and launch again)"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} hard links"
        raise ValueError(f"{path}: the lock file is {what}; refusing to use it (remove it and launch again)")
    return fd


class LockLost(RuntimeError):
    """The lock file held was removed or replaced (its folder deleted, say): another run may now take
    a new one, so the holder must stop without writing."""


@dataclasses.dataclass
class Lock:
    """A held lock: `check()` raises LockLost once `path` no longer names the file this process locked."""

    path: Path
    fd: int

    def check(self) -> None:
        held = os.fstat(self.fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise LockLost(
                f"{self.path} was removed or replaced while this run held it (its folder deleted?); "
                f"stopping without writing"
            )


@contextlib.contextmanager
def locked(path: Path, waiting: Callable[[str], None] | None = None) -> Iterator[Lock]:
    """An exclusive lock on `path` (flock: released by the kernel when the holder dies, even by SIGKILL).

    The holder writes its host and process id into the file; `waiting(holder)` is called once when
    the lock is held by someone else and this call has to wait for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {os.uname().nodename} pid {os.getpid()}\n".encode(), 0)
        except OSError as err:  # a full disk: name the file
            raise OSError(err.errno, err.strerror, str(path)) from None
        yield Lock(path, fd)
    finally:
        os.close(fd)  # releases the flock


def lock_holder(path: Path) -> str | None:
    """Who holds the lock on `path` ("host H pid P"), or None when no process does. Reads only: the
    file is never created, and a probe's shared lock is let go at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
    finally:
        os.close(fd)
    return None


# ---------------------------------------------------------------- per-epoch metrics


def metrics_path(cell_dir: Path) -> Path:
    return Path(cell_dir) / METRICS_LOG


def read_metrics(cell_dir: Path) -> list[dict]:
    """The per-epoch rows of a cell, oldest first; [] before its first epoch. `Corrupt`, naming the
    file and the line, when a row cannot be read or lacks its epoch (>= 1) or wall time (a file cut
    short by a full disk, a hand edit): a cell moves it aside on --retry, readers report it."""
    path = metrics_path(cell_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise Corrupt(path, f"unreadable ({err})") from None
    return [_metrics_row(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _metrics_row(path: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise Corrupt(path, f"line {n} is not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise Corrupt(path, f"line {n} is not a JSON object")
    epoch, wall = row.get(EPOCH), row.get(WALL_S)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise Corrupt(path, f"line {n} has no epoch (an integer >= 1), got {epoch!r}")
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not wall >= 0:
        raise Corrupt(path, f"line {n} has no wall_s (seconds >= 0), got {wall!r}")
    return row


def write_metrics(cell_dir: Path, rows: list[dict]) -> Path:
    """Replace the whole file (a few hundred short lines at most): readers never see a partial row."""
    return atomic_write(
        metrics_path(cell_dir), lambda f: f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    )


def tensorboard_dir(cell_dir: Path) -> Path:
    """One TensorBoard run per cell, named by its label, beside the other cells' runs, so that
    `tensorboard --logdir results/<experiment>` compares them; a lone cell keeps its own."""
    with contextlib.suppress(Corrupt):
        cell = read_record(Path(cell_dir) / CELL) or {}
        if "label" in cell:
            name = f"{cell['label']},seed={cell.get('seed')}".replace("/", "_")
            return Path(cell_dir).parent / TENSORBOARD / name
    return Path(cell_dir) / TENSORBOARD
