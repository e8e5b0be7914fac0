"""Launch an experiment's cells locally or on Slurm, never twice, and report their states.

A cell is done only when its result.json says "finished". A submitted cell has a
job.json (executor, job id); its live state comes from `sacct`. Launches take an
exclusive lock on the experiment folder while they decide and submit, so two
concurrent launches submit each cell exactly once.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import submitit
import torch

from . import store
from .cell import Interrupt, Preempted, run_cell
from .config import CellConfig, from_dict
from .grid import Cell, Experiment, cell_identity, slurm_parameters
from .progress import Progress

DONE, FAILED, CANCELLED, TIMEOUT, RUNNING, QUEUED, TODO = (
    "done", "failed", "cancelled", "timeout", "running", "queued", "todo")
ORDER = (DONE, RUNNING, QUEUED, TODO, FAILED, CANCELLED, TIMEOUT)
RETRYABLE = (FAILED, CANCELLED, TIMEOUT)
# sacct state -> cell state (a requeued job is queued again; PREEMPTED without requeue is a failure)
SACCT = {"PENDING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED, "REQUEUE_FED": QUEUED,
         "RESIZING": QUEUED, "SUSPENDED": QUEUED, "RUNNING": RUNNING, "COMPLETING": RUNNING,
         "CONFIGURING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING, "CANCELLED": CANCELLED,
         "TIMEOUT": TIMEOUT, "DEADLINE": TIMEOUT, "COMPLETED": FAILED, "FAILED": FAILED, "NODE_FAIL": FAILED,
         "OUT_OF_MEMORY": FAILED, "BOOT_FAIL": FAILED, "PREEMPTED": FAILED}
LOST_AFTER_S = 600  # a submitted job that sacct never heard of after this long is treated as failed


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


def cell_dir(root: Path, exp: Experiment, cell: Cell) -> Path:
    return experiment_dir(root, exp) / cell.id


def prepare(root: Path, exp: Experiment) -> Path:
    """Write experiment.json and each cell's identity and config (idempotent)."""
    folder = experiment_dir(root, exp)
    store.write_json(folder / "experiment.json", exp.describe())
    for cell in exp.cells:
        d = folder / cell.id
        if not (d / "cell.json").exists():
            store.write_json(d / "cell.json", cell_identity(exp, cell))
            store.write_yaml(d / "config.yaml", cell.config.to_dict())
    return folder


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on the experiment folder: one launch decides and submits at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".launch.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- states

def _expand_array(job_id: str) -> list[str]:
    """sacct shows pending array tasks as 12_[3-5%2]; name each task."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def sacct(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, elapsed)} from one `sacct` call; the latest record wins (requeues add records)."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Elapsed", "-j", ",".join(sorted(set(job_ids)))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    states: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            for jid in _expand_array(parts[0]):
                states[jid] = (parts[1].split()[0], parts[2])
    return states


def _pid_alive(job: dict) -> bool:
    if job.get("host") != socket.gethostname():
        return True  # another machine's local run: trust it
    try:
        os.kill(int(job["pid"]), 0)
        return True
    except (OSError, KeyError, ValueError):
        return False


def statuses(root: Path, exp: Experiment, query_slurm: bool = True) -> list[CellStatus]:
    """The state of every cell from its files, with live Slurm states from one sacct call."""
    folder = experiment_dir(root, exp)
    jobs = {c.id: store.read_json(folder / c.id / "job.json") for c in exp.cells}
    slurm_ids = [j["job_id"] for j in jobs.values() if j and j.get("executor") == "slurm"]
    live = sacct(slurm_ids) if query_slurm else {}
    return [_status(cell, store.read_result(folder / cell.id), jobs[cell.id], live) for cell in exp.cells]


def _status(cell: Cell, result: dict | None, job: dict | None, live: dict) -> CellStatus:
    job_id = job.get("job_id") if job else None
    if result and result.get("status") == store.FINISHED:
        metric = (result.get("metrics") or {}).get("linear_top1")
        return CellStatus(cell, DONE, job_id, f"{result.get('wall_time_s', 0):.0f}s", metric)
    if result and result.get("status") == store.FAILED:
        return CellStatus(cell, FAILED, job_id, reason=result.get("reason"))
    if not job:
        return CellStatus(cell, TODO)
    if job.get("executor") == "local":
        return CellStatus(cell, RUNNING if _pid_alive(job) else FAILED, f"pid {job.get('pid')}",
                          reason=None if _pid_alive(job) else "local run ended without a result")
    if job_id in live:
        state, elapsed = live[job_id]
        return CellStatus(cell, SACCT.get(state, QUEUED), job_id, elapsed, reason=f"slurm: {state}")
    lost = time.time() - job.get("submitted", time.time()) > LOST_AFTER_S
    return CellStatus(cell, FAILED if lost else QUEUED, job_id, reason="unknown to sacct" if lost else None)


def totals(rows: list[CellStatus]) -> dict[str, int]:
    return {s: n for s in ORDER if (n := sum(r.state == s for r in rows))}


# ---------------------------------------------------------------- running

def _retire(folder: Path) -> None:
    """Move a failed attempt's result and job record aside so the cell can run again."""
    attempts = folder / "attempts"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("result.json", "job.json"):
        if (folder / name).exists():
            attempts.mkdir(exist_ok=True)
            os.replace(folder / name, attempts / f"{stamp}-{name}")


def select(rows: list[CellStatus], retry: bool) -> list[Cell]:
    """Cells to launch now: never done or in-flight ones; failed ones only on retry."""
    return [r.cell for r in rows if r.state == TODO or (retry and r.state in RETRYABLE)]


@contextlib.contextmanager
def interrupt_on_signals(interrupt: Interrupt, signums=(signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)):
    """Turn signals into a request to checkpoint at the next step boundary (restored afterwards)."""
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda num, _frame: interrupt.request(f"signal {signal.Signals(num).name}"))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_one(config: dict, folder: str, threads: int = 0) -> str:
    """Run one cell in a worker process; returns its status."""
    if threads:
        torch.set_num_threads(threads)
    return run_cell(from_dict(CellConfig, config), Path(folder), show_progress=False)["status"]


def run_local(root: Path, exp: Experiment, cells: list[Cell], workers: int = 1,
              log: Callable[[str], None] = print) -> dict[str, str]:
    """Run cells one after another (or `workers` at a time); a failing cell is recorded and skipped."""
    folder = experiment_dir(root, exp)
    bar = Progress(len(cells), "cells", every_s=0.0)
    outcome: dict[str, str] = {}
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers) as pool:
            futures = {c.id: pool.submit(_run_one, c.config.to_dict(), str(folder / c.id), threads) for c in cells}
            for i, (cid, fut) in enumerate(futures.items(), 1):
                try:
                    outcome[cid] = fut.result()
                except Exception as err:  # recorded in the cell's result.json by run_cell
                    outcome[cid] = f"failed: {err}"
                bar.update(i, last=cid)
        return outcome
    interrupt = Interrupt()
    with interrupt_on_signals(interrupt):
        for i, cell in enumerate(cells, 1):
            d = folder / cell.id
            store.write_json(d / "job.json", {"executor": "local", "pid": os.getpid(),
                                              "host": socket.gethostname(), "submitted": time.time()})
            try:
                outcome[cell.id] = run_cell(cell.config, d, interrupt, show_progress=False)["status"]
            except Preempted as stop:
                log(f"stopped: {stop}. Run the same command again to resume.")
                outcome[cell.id] = "interrupted"
                break
            except Exception as err:
                outcome[cell.id] = f"failed: {type(err).__name__}: {err}"
                log(f"cell {cell.label} ({cell.id}) failed: {err}")
            finally:
                (d / "job.json").unlink(missing_ok=True)
            bar.update(i, last=f"{cell.label}={outcome[cell.id]}")
    return outcome


class CellJob(submitit.helpers.Checkpointable):
    """The Slurm job of one cell: resumes from its checkpoint; USR2 checkpoints and requeues."""

    def __call__(self, config: dict, folder: str) -> dict:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: calls checkpoint(), requeues, exits
        interrupt = Interrupt()
        signal.signal(signal.SIGUSR2, lambda *_: interrupt.request("preemption or time-limit signal"))
        try:
            result = run_cell(from_dict(CellConfig, config), Path(folder), interrupt)
        except Preempted:
            if callable(requeue):
                requeue(signal.SIGUSR2, None)
            raise
        if result["status"] != store.FINISHED:
            raise RuntimeError(f"cell failed: {result.get('reason')}")
        return {"status": result["status"], "metrics": result["metrics"]}


def submit_slurm(root: Path, exp: Experiment, cells: list[Cell]) -> list[str]:
    """One job array for `cells`; records each job id in the cell's job.json."""
    folder = experiment_dir(root, exp)
    executor = submitit.AutoExecutor(folder=folder / ".submitit" / "%j", cluster="slurm")
    executor.update_parameters(name=exp.name, slurm_max_num_timeout=exp.slurm.max_requeues,
                               **slurm_parameters(exp.slurm))
    with executor.batch():
        jobs = [executor.submit(CellJob(), c.config.to_dict(), str(folder / c.id)) for c in cells]
    now = time.time()
    for cell, job in zip(cells, jobs):
        store.write_json(folder / cell.id / "job.json", {"executor": "slurm", "job_id": job.job_id,
                                                        "submitted": now, "logs": str(job.paths.stdout)})
    return [job.job_id for job in jobs]


def pick_executor(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def launch(root: Path, exp: Experiment, executor: str = "auto", retry: bool = False, workers: int = 1,
           log: Callable[[str], None] = print) -> dict:
    """Prepare the results folder and start every cell that needs to run; returns what happened."""
    executor = pick_executor(executor)
    folder = experiment_dir(root, exp)
    with locked(folder):
        prepare(root, exp)
        rows = statuses(root, exp, query_slurm=executor == "slurm")
        cells = select(rows, retry)
        for cell in cells:
            _retire(folder / cell.id)
        skipped = totals([r for r in rows if r.cell not in cells])
        log(f"{exp.name}: {len(exp.cells)} cells; launching {len(cells)} ({executor})"
            + (f"; skipping {', '.join(f'{n} {s}' for s, n in skipped.items())}" if skipped else ""))
        if executor == "slurm":
            return {"executor": executor, "submitted": submit_slurm(root, exp, cells) if cells else []}
        if executor != "local":
            raise ValueError(f"unknown executor '{executor}'; choose from: auto, slurm, local")
        return {"executor": executor, "ran": run_local(root, exp, cells, workers, log)}
