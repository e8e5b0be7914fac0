"""The state of every cell (from its files and one `sacct` call), status tables and cost estimates.

A cell is done only when its result.json says "finished". A submitted cell has a job.json
(executor, job id); its live state comes from `sacct`. Nothing here imports torch, so
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

from . import store
from .data.folders import train_size as folder_train_size
from .grid import Cell, Experiment

DONE, FAILED, CANCELLED, TIMEOUT, RUNNING, QUEUED, UNKNOWN, TODO = (
    "done", "failed", "cancelled", "timeout", "running", "queued", "unknown", "todo")
ORDER = (DONE, RUNNING, QUEUED, UNKNOWN, TODO, FAILED, CANCELLED, TIMEOUT)
RETRYABLE = (FAILED, CANCELLED, TIMEOUT)
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


@dataclass
class CellStatus:
    cell: Cell
    state: str
    job_id: str | None = None
    elapsed: str | None = None
    metric: float | None = None
    reason: str | None = None


def experiment_dir(root: Path, exp: Experiment) -> Path:
    return Path(root) / exp.name


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


def pid_alive(job: dict) -> bool:
    """Whether the local process that claimed a cell still runs (another machine's claim is trusted)."""
    if job.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(job["pid"]), 0)
        return True
    except (OSError, KeyError, ValueError):
        return False


def statuses(root: Path, exp: Experiment) -> list[CellStatus]:
    """The state of every cell from its files, with live Slurm states from one sacct call.

    Results are read after sacct answers: a job writes its result before it ends, so a job
    that sacct saw end has its result on disk by then.
    """
    folder = experiment_dir(root, exp)
    jobs = {c.id: store.read_json(folder / c.id / "job.json") for c in exp.cells}
    live = sacct([j["job_id"] for j in jobs.values() if j and j.get("executor") == "slurm"])
    return [cell_status(cell, store.read_result(folder / cell.id), jobs[cell.id], live) for cell in exp.cells]


def cell_status(cell: Cell, result: dict | None, job: dict | None, live: dict | None) -> CellStatus:
    """One cell's state: its result decides, else its job record (local process or Slurm job)."""
    job_id = job.get("job_id") if job else None
    if result and result.get("status") == store.FINISHED:
        metric = (result.get("metrics") or {}).get("linear_top1")
        wall = result.get("wall_time_s") or 0.0
        return CellStatus(cell, DONE, job_id, f"{wall:.1f}s" if wall < 10 else f"{wall:.0f}s", metric)
    if result and result.get("status") == store.FAILED:
        return CellStatus(cell, FAILED, job_id, reason=result.get("reason"))
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
    return {s: n for s in ORDER if (n := sum(r.state == s for r in rows))}


# ---------------------------------------------------------------- tables

def render(rows: list[CellStatus], limit: int | None = None) -> str:
    """One row per cell (label, id, state, job, elapsed, top-1, why it failed), then the totals."""
    replicated = len({r.cell.label for r in rows}) < len(rows)  # replicates share a label: name the seed
    shown = rows if limit is None else rows[:limit]
    body = [(r.cell.label + (f" [seed {r.cell.seed}]" if replicated else ""), r.cell.id, r.state,
             r.job_id or "-", r.elapsed or "-", f"{100 * r.metric:.1f}%" if r.metric is not None else "-",
             _brief(r.reason) if r.state in (*RETRYABLE, UNKNOWN) else "")
            for r in shown]
    header = ("label", "id", "state", "job", "elapsed", "linear_top1", "reason")
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


def measured_rate(root: Path, exp: Experiment) -> float | None:
    """Median training images/s of this experiment's finished cells."""
    folder = experiment_dir(root, exp)
    rates = [r["images_per_s"] for c in exp.cells
             if (r := store.read_result(folder / c.id)) and r.get("status") == store.FINISHED
             and r.get("images_per_s")]
    return statistics.median(rates) if rates else None


def estimate(root: Path, exp: Experiment, rows: list[CellStatus]) -> str:
    """Cells x epochs x images still to train, and GPU-hours at a measured or configured rate."""
    todo = [r.cell for r in rows if r.state != DONE]
    sizes = [_train_size(c.config) for c in todo]
    if any(s is None for s in sizes):
        return (f"cost: {len(todo)} cells to run (image count unknown for data.name=folder: "
                f"data.root not found; set it to the folder)")
    images = sum(s[0] * c.config.train.epochs for s, c in zip(sizes, todo))
    sources = sorted({s[1] for s in sizes if s[1]})
    line = (f"cost: {len(todo)} cells x epochs x images = {images:,} training images"
            + (f" (images per epoch: {'; '.join(sources)})" if sources else ""))
    rate, source = measured_rate(root, exp), "measured"
    if rate is None and exp.slurm.images_per_s:
        rate, source = exp.slurm.images_per_s, "configured slurm.images_per_s"
    if rate:
        gpus = max(1, exp.slurm.gpus_per_node)
        line += f"; about {images / rate / 3600 * gpus:.2f} GPU-hours at {rate:,.0f} images/s per cell ({source})"
    else:
        line += "; set slurm.images_per_s (or finish one cell) for a GPU-hour estimate"
    return line


def _train_size(config) -> tuple[int, str] | None:
    """(training images per epoch, where a folder's count comes from), or None when unknown."""
    d = config.data
    if d.name == "folder":
        return folder_train_size(d.root, d.classes, d.per_class)
    size = d.n_train if d.name == "embedded" else TRAIN_SIZES.get(d.name)
    return (size, "") if size is not None else None
