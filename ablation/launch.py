"""Launch an experiment's cells locally or on Slurm, each exactly once.

Launches take an exclusive lock on the experiment folder while they decide what to run and
record it (a Slurm job.json, or a local claim with the process id), so concurrent launches
never start a cell twice. Local launches claim one cell at a time and run it outside the
lock, so two of them share the work. A Slurm cell that receives USR2 (preemption, time limit)
checkpoints at the next step boundary and requeues itself; the new run resumes bit-exactly.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import submitit
import torch

from . import store
from .cell import Interrupt, Preempted, run_cell
from .config import CellConfig, from_dict
from .data.folders import check as check_folder
from .grid import Cell, Experiment, cell_identity, slurm_parameters
from .status import RETRYABLE, TODO, CellStatus, experiment_dir, statuses, totals

EXECUTORS = ("auto", "slurm", "local")


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
    """Exclusive lock on the experiment folder: one launch decides and records at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".launch.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _retire(folder: Path) -> None:
    """Move a failed attempt's result and job record to attempts/ so the cell can run again."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("result.json", "job.json"):
        if (folder / name).exists():
            (folder / "attempts").mkdir(exist_ok=True)
            os.replace(folder / name, folder / "attempts" / f"{stamp}-{name}")


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


# ---------------------------------------------------------------- local

def claim(root: Path, exp: Experiment) -> Cell | None:
    """Under the lock: the next to-do cell, recorded in its job.json as run by this process."""
    folder = experiment_dir(root, exp)
    with locked(folder):
        cell = next((r.cell for r in statuses(root, exp) if r.state == TODO), None)
        if cell is not None:
            store.write_json(folder / cell.id / "job.json", {
                "executor": "local", "pid": os.getpid(), "host": socket.gethostname(), "submitted": time.time()})
    return cell


def work(root: Path, exp: Experiment, threads: int = 0, log: Callable[[str], None] = print) -> dict[str, str]:
    """Claim and run to-do cells until none is left; a failing cell is recorded and skipped.

    A signal stops the current cell at a step boundary with a checkpoint; the next launch resumes it.
    """
    if threads:
        torch.set_num_threads(threads)
    folder = experiment_dir(root, exp)
    outcome: dict[str, str] = {}
    interrupt = Interrupt()
    total = sum(r.state == TODO for r in statuses(root, exp))
    with interrupt_on_signals(interrupt):
        while not interrupt.requested and (cell := claim(root, exp)) is not None:
            d = folder / cell.id
            log(f"[{len(outcome) + 1}/{total}] {exp.name}: running {cell.label} ({cell.id})")
            try:
                result = run_cell(cell.config, d, interrupt, show_progress=False)
                outcome[cell.id] = result["status"]
                metric = result["metrics"].get("linear_top1")
                log(f"cell {cell.label} ({cell.id}): {result['status']}"
                    + (f", linear_top1={metric:.4f}" if metric is not None else f" ({result.get('reason')})"))
            except Preempted as stop:
                outcome[cell.id] = "interrupted"
                log(f"cell {cell.label} ({cell.id}) stopped: {stop}. Launch again to resume.")
            except Exception as err:  # run_cell has recorded it in the cell's result.json
                outcome[cell.id] = f"failed: {type(err).__name__}: {err}"
                log(f"cell {cell.label} ({cell.id}) failed: {type(err).__name__}: {err}")
            finally:
                (d / "job.json").unlink(missing_ok=True)
    return outcome


def run_local(root: Path, exp: Experiment, workers: int = 1,
              log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the to-do cells on this machine, `workers` processes at a time (CPU threads split among them).

    Workers are spawned, not forked: a fork of a process that has run torch can deadlock.
    """
    if workers <= 1:
        return work(root, exp, log=log)
    threads = max(1, (os.cpu_count() or 1) // workers)
    outcome: dict[str, str] = {}
    spawn = multiprocessing.get_context("spawn")
    with interrupt_on_signals(Interrupt()), ProcessPoolExecutor(workers, spawn) as pool:  # workers see signals too
        for part in [pool.submit(work, root, exp, threads) for _ in range(workers)]:
            outcome.update(part.result())
    return outcome


# ---------------------------------------------------------------- slurm

class CellJob(submitit.helpers.Checkpointable):
    """The Slurm job of one cell: resumes from its checkpoint; USR2 checkpoints and requeues.

    More than one task runs DDP (gloo on CPU, NCCL on GPU): each rank trains on its shard of
    the global batch and rank 0 writes the files.
    """

    def __call__(self, config: dict, folder: str) -> dict:
        env = submitit.JobEnvironment()
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:  # without CPU binding every task would use all of the node's cores
            torch.set_num_threads(threads)
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: calls checkpoint(), requeues, exits
        interrupt = Interrupt()
        signal.signal(signal.SIGUSR2, lambda *_: interrupt.request("preemption or time-limit signal"))
        with _distributed(env):
            try:
                result = run_cell(from_dict(CellConfig, config), Path(folder), interrupt)
            except Preempted:
                if env.global_rank == 0 and callable(requeue):
                    requeue(signal.SIGUSR2, None)  # exits the process once the job is requeued
                if env.global_rank != 0:
                    sys.exit(f"rank {env.global_rank}: preempted; rank 0 requeues the job")
                raise
        if result["status"] != store.FINISHED:
            raise RuntimeError(f"cell failed: {result.get('reason')}")
        return {"status": result["status"], "metrics": result["metrics"]}


@contextlib.contextmanager
def _distributed(env: submitit.JobEnvironment) -> Iterator[None]:
    """A process group over the job's tasks when it has more than one."""
    if env.num_tasks <= 1:
        yield
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def submit_slurm(root: Path, exp: Experiment, cells: list[Cell]) -> list[str]:
    """One job array for `cells`; records each job id in the cell's job.json."""
    folder = experiment_dir(root, exp).resolve()  # jobs may start in another working directory
    executor = submitit.AutoExecutor(folder=folder / ".submitit" / "%j", cluster="slurm",
                                     slurm_max_num_timeout=exp.slurm.max_requeues)
    executor.update_parameters(name=exp.name, **slurm_parameters(exp.slurm))
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit echoes sbatch's errors
            jobs = [executor.submit(CellJob(), c.config.to_dict(), str(folder / c.id)) for c in cells]
    except submitit.core.utils.FailedJobError as err:
        reason = "; ".join(str(err).strip().splitlines())
        raise ValueError(f"sbatch refused the jobs (check the slurm section): {reason}") from None
    now = time.time()
    for cell, job in zip(cells, jobs):
        store.write_json(folder / cell.id / "job.json", {"executor": "slurm", "job_id": job.job_id,
                                                        "submitted": now, "logs": str(job.paths.stderr)})
    return [job.job_id for job in jobs]


def slurm_answers(timeout_s: float = 10.0) -> bool:
    """Whether a Slurm controller answers (`sinfo`); an installed but stopped cluster does not."""
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True,
                              timeout=timeout_s).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pick_executor(name: str, log: Callable[[str], None] = print) -> str:
    """auto: Slurm when `sbatch` is on PATH and the controller answers, else local (saying why)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor '{name}'; choose from: {', '.join(EXECUTORS)}")
    if name != "auto":
        return name
    if not shutil.which("sbatch"):
        return "local"
    if slurm_answers():
        return "slurm"
    log("sbatch is installed but no Slurm controller answers (sinfo); running locally")
    return "local"


def launch(root: Path, exp: Experiment, executor: str = "auto", retry: bool = False, workers: int = 1,
           log: Callable[[str], None] = print) -> dict:
    """Prepare the results folder and start every cell that needs to run; returns what happened.

    Image folders are checked first (one-line error), so a bad data.root fails no cell."""
    for root_dir, classes, per_class in {_folder_key(c.config) for c in exp.cells} - {None}:
        check_folder(root_dir, list(classes) if isinstance(classes, tuple) else classes, per_class)
    executor = pick_executor(executor, log)
    folder = experiment_dir(root, exp)
    with locked(folder):
        prepare(root, exp)
        rows = statuses(root, exp)
        cells = select(rows, retry)
        for cell in cells:
            _retire(folder / cell.id)
        chosen = {c.id for c in cells}
        skipped = totals([r for r in rows if r.cell.id not in chosen])
        log(f"{exp.name}: {len(exp.cells)} cells; launching {len(cells)} ({executor})"
            + (f"; skipping {', '.join(f'{n} {s}' for s, n in skipped.items())}" if skipped else ""))
        if executor == "slurm":
            return {"executor": executor, "submitted": submit_slurm(root, exp, cells) if cells else []}
    return {"executor": executor, "ran": run_local(root, exp, workers, log)}


def _folder_key(config: CellConfig) -> tuple | None:
    """(root, classes, per_class) of a folder cell, hashable; None for other data sets."""
    d = config.data
    if d.name != "folder":
        return None
    return d.root, tuple(d.classes) if isinstance(d.classes, list) else d.classes, d.per_class
