"""A grid while it runs: each cell's progress (from its metrics.jsonl), an ETA for the grid, the
status table with progress columns, the same as one JSON document, and a view that refreshes
until every cell has ended.

Reads only the results folder and `sacct` (through ablation.status), never torch, so it is as fast
as `ablate status`.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import store
from .grid import Experiment
from .names import CANCELLED, CORRUPT, DONE, FAILED, RUNNING, TIMEOUT
from .status import CellStatus, render, statuses, totals

ENDED = (DONE, FAILED, CORRUPT, CANCELLED, TIMEOUT)  # a todo cell has not ended: it waits for a launch
CLEAR = "\033[H\033[2J"


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
    return Snapshot(exp, rows, {cid: log[-1] if log else None for cid, log in logs.items()},
                    eta(folder, rows, logs), unreadable)


def eta(folder: Path, rows: list[CellStatus], logs: dict[str, list[dict]]) -> float | None:
    """Seconds until every cell has ended, if the cells left run as many at a time as run now.

    Work left: each unended cell's epochs to go at the median seconds per epoch of the grid's
    cells so far (wall time over epochs, start-up included), plus the median time a finished cell
    spent after its last epoch (the probes). None before any cell has finished an epoch.
    """
    paces = [log[-1]["wall_s"] / log[-1]["epoch"] for log in logs.values() if log]
    if not paces:
        return None
    tails = [result["wall_time_s"] - logs[r.cell.id][-1]["wall_s"] for r in rows
             if r.state == DONE and logs[r.cell.id] and (result := store.read_record(folder / r.cell.id / store.RESULT))
             and result.get("wall_time_s") is not None]
    pace, tail = statistics.median(paces), statistics.median(tails) if tails else 0.0
    left = [r for r in rows if r.state not in ENDED]
    work = sum((r.cell.config.train.epochs - _epoch(logs[r.cell.id])) * pace + tail for r in left)
    return work / max(1, sum(r.state == RUNNING for r in rows))


def _epoch(log: list[dict]) -> int:
    return log[-1]["epoch"] if log else 0


def cells(snap: Snapshot) -> list[dict]:
    """One record per cell: what the table shows, as numbers."""
    out = []
    for r in snap.rows:
        row = snap.latest[r.cell.id] or {}
        out.append({"label": r.cell.label, "id": r.cell.id, "seed": r.cell.seed, "coords": r.cell.coords,
                    "state": r.state, "job": r.job_id, "elapsed": r.elapsed, "epoch": row.get("epoch"),
                    "epochs": r.cell.config.train.epochs, "loss": row.get("loss"),
                    "images_per_s": row.get("images_per_s"), "linear_top1": r.metric, "reason": r.reason,
                    "log_error": snap.unreadable.get(r.cell.id)})
    return out


def document(snap: Snapshot) -> dict:
    """`ablate status --json`: the experiment, every cell, the totals and the ETA."""
    return {"experiment": snap.experiment.name, "time": round(time.time(), 3), "cells": cells(snap),
            "totals": totals(snap.rows), "total": len(snap.rows), "ended": _ended(snap.rows),
            "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1)}


def _ended(rows: list[CellStatus]) -> bool:
    return all(r.state in ENDED for r in rows)


def table(snap: Snapshot, limit: int | None = None) -> str:
    """The status table with epoch (done/total), latest loss and images/s; while cells remain, the
    totals line ends with the ETA (the table's last line stays its totals)."""
    records = cells(snap)
    columns = {
        "epoch": {c["id"]: f"{c['epoch']}/{c['epochs']}" if c["epoch"] is not None else "unreadable log"
                  for c in records if c["epoch"] is not None or c["log_error"]},
        "loss": {c["id"]: f"{c['loss']:.4f}" for c in records if c["loss"] is not None},
        "img/s": {c["id"]: f"{c['images_per_s']:.0f}" for c in records if c["images_per_s"] is not None},
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
