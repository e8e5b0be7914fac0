"""The state of a grid: every cell's state (from its files and one `sacct` call), its progress (from its
metrics.jsonl) and the grid's ETA, shown as a status table, as one JSON document, or as a view that
refreshes until every cell has ended: what `ablate status` prints.

A cell is done only when its result.json says "finished". A submitted cell has a job.json
(executor, job id); its live state comes from `sacct`. A cell whose files cannot be read is
`corrupt`, naming the file, and the rest of the grid reads on. Nothing here imports torch, so
`ablate status` stays fast on large grids (`--dry-run` imports it only to validate augmentations).
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import legacy_ids, store
from .grid import Cell, Experiment
from .names import (
    CANCELLED,
    CORRUPT,
    DONE,
    ENDED,
    EPOCH,
    FAILED,
    FINISHED,
    IMAGES_PER_S,
    LOSS,
    PRIMARY_METRIC,
    QUEUED,
    RETRYABLE,
    RUNNING,
    STATES,
    TIMEOUT,
    TODO,
    UNKNOWN,
    WALL_S,
    WALL_TIME_S,
)
from .slurm.sacct import CELL_STATE, live_states

LOST_AFTER_S = 600  # a submitted job that sacct never heard of after this long is treated as failed
CLEAR = "\033[H\033[2J"


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
    live = live_states([str(j.get("job_id")) for j in jobs.values() if j and j.get("executor") == "slurm"])
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
    return CellStatus(
        row.cell,
        RUNNING,
        row.job_id,
        row.elapsed,
        reason=f"its job ended ({row.reason}) but {holder} still holds the cell's lock",
    )


def _corrupt(cell: Cell, err: store.Corrupt) -> CellStatus:
    return CellStatus(cell, CORRUPT, reason=str(err), files=(err.path.name,))


def cell_status(cell: Cell, result: dict | None, job: dict | None, live: dict | None) -> CellStatus:
    """One cell's state: its result decides, else its job record (local process or Slurm job)."""
    job_id = job.get("job_id") if job else None
    if result and result.get("status") == FINISHED:
        metric = (result.get("metrics") or {}).get(PRIMARY_METRIC)
        wall = result.get("wall_time_s") or 0.0
        return CellStatus(cell, DONE, job_id, f"{wall:.1f}s" if wall < 10 else f"{wall:.0f}s", metric, result=result)
    if result and result.get("status") == FAILED:
        return CellStatus(cell, FAILED, job_id, reason=result.get("reason"), result=result)
    if result and result.get("status") == CORRUPT:  # the cell found one of its files unreadable
        return CellStatus(
            cell,
            CORRUPT,
            job_id,
            reason=result.get("reason"),
            files=(store.RESULT, *result.get("files", ())),
            result=result,
        )
    if not job:
        return CellStatus(cell, TODO)
    if job.get("executor") == "local":
        alive = pid_alive(job)
        return CellStatus(
            cell,
            RUNNING if alive else FAILED,
            f"pid {job.get('pid')}",
            reason=None if alive else "local run ended without a result",
        )
    if live is None:
        return CellStatus(cell, UNKNOWN, job_id, reason="sacct did not answer")
    if job_id in live:
        state, elapsed = live[job_id]
        return CellStatus(cell, CELL_STATE.get(state, QUEUED), job_id, elapsed, reason=f"slurm: {state}")
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
    body: list[tuple[str, ...]] = [
        (
            r.cell.label + (f" [seed {r.cell.seed}]" if replicated else ""),
            r.cell.id,
            r.state,
            r.job_id or "-",
            r.elapsed or "-",
            f"{100 * r.metric:.1f}%" if r.metric is not None else "-",
            *(col.get(r.cell.id, "-") for col in columns.values()),
            _brief(r.reason) if r.state in (*RETRYABLE, UNKNOWN) else "",
        )
        for r in shown
    ]
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
    return line if len(line) <= width else line[: width - 3] + "..."


# ---------------------------------------------------------------- progress (`ablate status`)


@dataclass
class Snapshot:
    """Every cell's state and latest metrics row (None before its first epoch), and the grid's ETA;
    `unreadable`: why a cell's metrics.jsonl cannot be read (its progress is then unknown)."""

    experiment: Experiment
    rows: list[CellStatus]
    latest: dict[str, dict | None]
    eta_s: float | None
    unreadable: dict[str, str] = field(default_factory=dict)


def snapshot(root: Path, exp: Experiment) -> Snapshot:
    folder = store.experiment_dir(root, exp.name)
    rows = statuses(root, exp)
    logs, unreadable = {}, {}
    for r in rows:
        try:
            logs[r.cell.id] = store.read_metrics(folder / r.cell.id)
        except store.Corrupt as err:  # a status never fails on one cell: it shows the cell's progress as unknown
            logs[r.cell.id], unreadable[r.cell.id] = [], str(err)
    return Snapshot(
        exp, rows, {cid: log[-1] if log else None for cid, log in logs.items()}, eta(folder, rows, logs), unreadable
    )


def eta(folder: Path, rows: list[CellStatus], logs: dict[str, list[dict]]) -> float | None:
    """Seconds until every cell has ended, if the cells left run as many at a time as run now.

    Work left: each unended cell's epochs to go at the median seconds per epoch of the grid's
    cells so far (wall time over epochs, start-up included), plus the median time a finished cell
    spent after its last epoch (the probes). None before any cell has finished an epoch.
    """
    paces = [log[-1][WALL_S] / log[-1][EPOCH] for log in logs.values() if log]
    if not paces:
        return None
    tails = [
        result[WALL_TIME_S] - logs[r.cell.id][-1][WALL_S]
        for r in rows
        if r.state == DONE
        and logs[r.cell.id]
        and (result := store.read_record(folder / r.cell.id / store.RESULT))
        and result.get(WALL_TIME_S) is not None
    ]
    pace, tail = statistics.median(paces), statistics.median(tails) if tails else 0.0
    left = [r for r in rows if r.state not in ENDED]
    work = sum((r.cell.config.train.epochs - _epoch(logs[r.cell.id])) * pace + tail for r in left)
    return work / max(1, sum(r.state == RUNNING for r in rows))


def _epoch(log: list[dict]) -> int:
    return log[-1][EPOCH] if log else 0


def cells(snap: Snapshot) -> list[dict]:
    """One record per cell: what the table shows, as numbers."""
    out = []
    for r in snap.rows:
        row = snap.latest[r.cell.id] or {}
        out.append(
            {
                "label": r.cell.label,
                "id": r.cell.id,
                "seed": r.cell.seed,
                "coords": r.cell.coords,
                "state": r.state,
                "job": r.job_id,
                "elapsed": r.elapsed,
                EPOCH: row.get(EPOCH),
                "epochs": r.cell.config.train.epochs,
                LOSS: row.get(LOSS),
                IMAGES_PER_S: row.get(IMAGES_PER_S),
                PRIMARY_METRIC: r.metric,
                "reason": r.reason,
                "log_error": snap.unreadable.get(r.cell.id),
            }
        )
    return out


def document(snap: Snapshot) -> dict:
    """`ablate status --json`: the experiment, every cell, the totals and the ETA."""
    return {
        "experiment": snap.experiment.name,
        "time": round(time.time(), 3),
        "cells": cells(snap),
        "totals": totals(snap.rows),
        "total": len(snap.rows),
        "ended": _ended(snap.rows),
        "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1),
    }


def _ended(rows: list[CellStatus]) -> bool:
    return all(r.state in ENDED for r in rows)


def table(snap: Snapshot, limit: int | None = None) -> str:
    """The status table with epoch (done/total), latest loss and images/s; while cells remain, the
    totals line ends with the ETA (the table's last line stays its totals)."""
    records = cells(snap)
    columns = {
        "epoch": {
            c["id"]: f"{c[EPOCH]}/{c['epochs']}" if c[EPOCH] is not None else "unreadable log"
            for c in records
            if c[EPOCH] is not None or c["log_error"]
        },
        "loss": {c["id"]: f"{c[LOSS]:.4f}" for c in records if c[LOSS] is not None},
        "img/s": {c["id"]: f"{c[IMAGES_PER_S]:.0f}" for c in records if c[IMAGES_PER_S] is not None},
    }
    text = render(snap.rows, limit=limit, columns=columns)
    if _ended(snap.rows):
        return text
    left = sum(r.state not in ENDED for r in snap.rows)
    running = sum(r.state == RUNNING for r in snap.rows)
    when = "unknown until a cell has finished an epoch" if snap.eta_s is None else _duration(snap.eta_s)
    return text + f"; eta: {when} ({left} cells left, {running} running)"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def watch(root: Path, exp: Experiment, every_s: float = 5.0, stream: TextIO | None = None) -> int:
    """Redraw the table every `every_s` seconds until every cell has ended (on a terminal in place,
    elsewhere only when it changed); 0 when all are done, 1 when some did not finish, 130 on Ctrl-C."""
    stream = stream or sys.stdout
    tty, shown = stream.isatty(), None
    try:
        while True:
            snap = snapshot(root, exp)
            text = table(snap)
            if tty:
                stream.write(CLEAR + text + "\n")
            elif text != shown:
                stream.write(text + "\n\n")
            stream.flush()
            shown = text
            if _ended(snap.rows):
                return 0 if all(r.state == DONE for r in snap.rows) else 1
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 130
