"""The state of every cell (from its files and one `sacct` call), status tables and cost estimates.

A cell is done only when its result.json says "finished". A submitted cell has a job.json
(executor, job id); its live state comes from `sacct`. A cell whose files cannot be read is
`corrupt`, naming the file, and the rest of the grid reads on. Nothing here imports torch, so
`ablate status` stays fast on large grids (`--dry-run` imports it only to validate augmentations).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import legacy_ids, store
from .data.folders import train_size as folder_train_size
from .grid import Cell, Experiment
from .names import (
    CANCELLED,
    CORRUPT,
    DONE,
    FAILED,
    FINISHED,
    PRIMARY_METRIC,
    QUEUED,
    RETRYABLE,
    RUNNING,
    STATES,
    TIMEOUT,
    TODO,
    UNKNOWN,
)

# sacct state -> cell state (a requeued job is queued again; PREEMPTED without requeue is a failure;
# a job that COMPLETED without a finished result.json failed)
SACCT = {"PENDING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED, "REQUEUE_FED": QUEUED,
         "RESIZING": QUEUED, "SUSPENDED": QUEUED, "RUNNING": RUNNING, "COMPLETING": RUNNING,
         "CONFIGURING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING, "CANCELLED": CANCELLED,
         "TIMEOUT": TIMEOUT, "DEADLINE": TIMEOUT, "COMPLETED": FAILED, "FAILED": FAILED, "NODE_FAIL": FAILED,
         "OUT_OF_MEMORY": FAILED, "BOOT_FAIL": FAILED, "PREEMPTED": FAILED}
LOST_AFTER_S = 600  # a submitted job that sacct never heard of after this long is treated as failed
# Training images per epoch of the known data sets (folders are counted only when asked).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}
TRAIN_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10}  # balanced: data.per_class caps each


@dataclass
class CellStatus:
    cell: Cell
    state: str
    job_id: str | None = None
    elapsed: str | None = None
    metric: float | None = None
    reason: str | None = None
    files: tuple[str, ...] = ()  # a corrupt cell's unreadable files, moved aside by --retry
    result: dict[str, Any] | None = None


# ---------------------------------------------------------------- states

def expand_array(job_id: str) -> list[str]:
    """sacct shows pending array tasks as 12_[3-5,7%2]; name each task (12_3, 12_4, 12_5, 12_7)."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """{job id: (state, elapsed)} from `sacct -X -n -P -o JobID,State,Elapsed` output."""
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1]:
            for jid in expand_array(parts[0]):
                states[jid] = (parts[1].split()[0], parts[2])  # "CANCELLED by 0" -> CANCELLED
    return states


def sacct(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """Live states of `job_ids` from one `sacct` call (a requeued job shows its latest run);
    None when sacct is missing or does not answer, so that no job is taken for lost.

    Array tasks are asked for by their array's id: sacct names pending tasks only as a range.
    """
    if not job_ids:
        return {}
    if not shutil.which("sacct"):
        return None
    arrays = sorted({jid.split("_")[0] for jid in job_ids})
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Elapsed", "-j", ",".join(arrays)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return parse_sacct(out.stdout) if out.returncode == 0 else None


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, /proc/PID/stat field 22), which tells it
    from a later process that reuses its id; None when there is no such process (or no /proc), or
    when it has ended and only waits to be reaped (a zombie: state Z)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def pid_alive(job: dict) -> bool:
    """Whether the local process that claimed a cell still runs (another machine's claim is trusted).

    A claim records its process's start time where /proc has it: a process that merely reuses the id
    of a dead claimant is not it.
    """
    if job.get("host") != socket.gethostname():
        return True
    try:
        pid = int(job["pid"])
        if job.get("started") is not None:
            return process_start(pid) == job["started"]
        os.kill(pid, 0)
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False


def statuses(root: Path, exp: Experiment) -> list[CellStatus]:
    """The state of every cell from its files, with live Slurm states from one sacct call.

    Results are read after sacct answers: a job writes its result before it ends, so a job
    that sacct saw end has its result on disk by then.
    """
    folder = store.experiment_dir(root, exp.name)
    legacy_ids.find(folder, exp.cells)
    jobs: dict[str, dict | None] = {}
    bad: dict[str, store.Corrupt] = {}
    for c in exp.cells:
        try:
            jobs[c.id] = store.read_job(folder / c.id)
        except store.Corrupt as err:
            jobs[c.id], bad[c.id] = None, err
    live = sacct([str(j.get("job_id")) for j in jobs.values() if j and j.get("executor") == "slurm"])
    rows = []
    for cell in exp.cells:
        try:
            result = store.read_result(folder / cell.id)
        except store.Corrupt as err:
            rows.append(_corrupt(cell, err))
            continue
        row = _still_held(folder / cell.id, cell_status(cell, result, jobs[cell.id], live))
        rows.append(_corrupt(cell, bad[cell.id]) if cell.id in bad and row.state != DONE else row)
    return rows


def _still_held(cell_dir: Path, row: CellStatus) -> CellStatus:
    """A cell whose job or process has ended without a result while a live process still holds its
    lock (a pack's cell that outlived its job) is running: --retry would only wait for that lock."""
    if row.state not in (FAILED, CANCELLED, TIMEOUT) or row.result is not None:
        return row
    holder = store.lock_holder(cell_dir / store.CELL_LOCK)
    if holder is None:
        return row
    return CellStatus(row.cell, RUNNING, row.job_id, row.elapsed,
                      reason=f"its job ended ({row.reason}) but {holder} still holds the cell's lock")


def _corrupt(cell: Cell, err: store.Corrupt) -> CellStatus:
    return CellStatus(cell, CORRUPT, reason=str(err), files=(err.path.name,))


def cell_status(cell: Cell, result: dict | None, job: dict | None, live: dict | None) -> CellStatus:
    """One cell's state: its result decides, else its job record (local process or Slurm job)."""
    job_id = job.get("job_id") if job else None
    if result and result.get("status") == FINISHED:
        metric = (result.get("metrics") or {}).get(PRIMARY_METRIC)
        wall = result.get("wall_time_s") or 0.0
        return CellStatus(cell, DONE, job_id, f"{wall:.1f}s" if wall < 10 else f"{wall:.0f}s", metric,
                          result=result)
    if result and result.get("status") == FAILED:
        return CellStatus(cell, FAILED, job_id, reason=result.get("reason"), result=result)
    if result and result.get("status") == CORRUPT:  # the cell found one of its files unreadable
        return CellStatus(cell, CORRUPT, job_id, reason=result.get("reason"),
                          files=(store.RESULT, *result.get("files", ())), result=result)
    if not job:
        return CellStatus(cell, TODO)
    if job.get("executor") == "local":
        alive = pid_alive(job)
        return CellStatus(cell, RUNNING if alive else FAILED, f"pid {job.get('pid')}",
                          reason=None if alive else "local run ended without a result")
    if live is None:
        return CellStatus(cell, UNKNOWN, job_id, reason="sacct did not answer")
    if job_id in live:
        state, elapsed = live[job_id]
        return CellStatus(cell, SACCT.get(state, QUEUED), job_id, elapsed, reason=f"slurm: {state}")
    lost = time.time() - job.get("submitted", time.time()) > LOST_AFTER_S
    return CellStatus(cell, FAILED if lost else QUEUED, job_id, reason="unknown to sacct" if lost else None)


def totals(rows: list[CellStatus]) -> dict[str, int]:
    return {s: n for s in STATES if (n := sum(r.state == s for r in rows))}


# ---------------------------------------------------------------- tables

def render(rows: list[CellStatus], limit: int | None = None, columns: dict[str, dict[str, str]] | None = None) -> str:
    """One row per cell (label, id, state, job, elapsed, top-1, why it failed), then the totals.

    `columns`: more columns after top-1, each {cell id: text} ("-" for cells it leaves out)."""
    columns = columns or {}
    replicated = len({r.cell.label for r in rows}) < len(rows)  # replicates share a label: name the seed
    shown = rows if limit is None else rows[:limit]
    body: list[tuple[str, ...]] = [(r.cell.label + (f" [seed {r.cell.seed}]" if replicated else ""), r.cell.id, r.state,
             r.job_id or "-", r.elapsed or "-", f"{100 * r.metric:.1f}%" if r.metric is not None else "-",
             *(col.get(r.cell.id, "-") for col in columns.values()),
             _brief(r.reason) if r.state in (*RETRYABLE, UNKNOWN) else "")
            for r in shown]
    header: tuple[str, ...] = ("label", "id", "state", "job", "elapsed", PRIMARY_METRIC, *columns, "reason")
    if not any(line[-1] for line in body):  # the reason column only when something went wrong
        header, body = header[:-1], [line[:-1] for line in body]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (header, *body)]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more cells")
    lines.append("total: " + ", ".join(f"{n} {s}" for s, n in totals(rows).items()) + f" (of {len(rows)})")
    return "\n".join(lines)


def _brief(reason: str | None, width: int = 60) -> str:
    line = next(iter((reason or "").strip().splitlines()), "")
    return line if len(line) <= width else line[:width - 3] + "..."


def measured_rate(rows: list[CellStatus]) -> float | None:
    """Median training images/s of the finished cells."""
    rates = [r.result["images_per_s"] for r in rows if r.state == DONE and r.result and r.result.get("images_per_s")]
    return statistics.median(rates) if rates else None


def estimate(exp: Experiment, rows: list[CellStatus]) -> str:
    """Cells x epochs x images still to train, and GPU-hours of the cells' allocations (nodes x GPUs per node)
    at a measured or configured rate."""
    todo = [r.cell for r in rows if r.state != DONE]
    sizes = [s for c in todo if (s := train_size(c.config.data)) is not None]
    if len(sizes) < len(todo):
        return (f"cost: {len(todo)} cells to run (image count unknown for data.name=folder: "
                f"data.root not found; set it to the folder)")
    images = sum(s[0] * c.config.train.epochs for s, c in zip(sizes, todo))
    sources = sorted({s[1] for s in sizes if s[1]})
    line = (f"cost: {len(todo)} cells x epochs x images = {images:,} training images"
            + (f" (images per epoch: {'; '.join(sources)})" if sources else ""))
    rate, source = measured_rate(rows), "measured"
    if rate is None and exp.slurm.images_per_s:
        rate, source = exp.slurm.images_per_s, "configured slurm.images_per_s"
    if rate:
        gpus = max(1, exp.slurm.gpus_per_node) * exp.slurm.nodes  # the whole allocation of a cell
        line += (f"; about {images / rate / 3600 * gpus:.2f} GPU-hours ({gpus} GPU{'s' * (gpus > 1)} a cell) "
                 f"at {rate:,.0f} images/s per cell ({source})")
    else:
        line += "; set slurm.images_per_s (or finish one cell) for a GPU-hour estimate"
    return line


def train_size(d) -> tuple[int, str] | None:
    """(training images per epoch, where a folder's count comes from) of a cell's DataConfig, or None
    when unknown."""
    if d.name == "folder":
        return folder_train_size(d.root, d.classes, d.per_class)
    if d.name == "embedded":
        return d.n_train, ""
    if d.name not in TRAIN_SIZES:
        return None
    images = TRAIN_SIZES[d.name]
    return (images if d.per_class is None else min(images, TRAIN_CLASSES[d.name] * d.per_class)), ""
