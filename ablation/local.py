"""Run an experiment's to-do cells on this machine: one worker process or several, each claiming one
cell at a time.

A worker claims a cell under the experiment's launch lock (its job.json records the process id) and
runs it outside the lock, so several workers, and several launches, share the work and never run a
cell twice. A signal to a launch reaches its worker processes too: each stops its cell at the next
step boundary with a checkpoint and claims no other; the next launch resumes it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from . import store
from .cell import Interrupt, Preempted, run_cell
from .config import CellConfig
from .grid import Cell, Experiment
from .names import INTERRUPTED, PRIMARY_METRIC, TODO
from .pack import auto_cells_per_gpu, gpu_memory
from .status import process_start, statuses

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@contextlib.contextmanager
def handling(signums: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Install `handler` for these signals; the previous handlers come back afterwards."""
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def interrupt_on_signals(
    interrupt: Interrupt, signums: tuple[int, ...] = STOP_SIGNALS
) -> contextlib.AbstractContextManager[None]:
    """Turn signals into a request to checkpoint at the next step boundary (restored afterwards)."""
    return handling(signums, lambda num, _frame: interrupt.request(f"signal {signal.Signals(num).name}"))


def local_workers(setting: str | int, configs: list[CellConfig]) -> int:
    """`--workers`: a number, or 'auto': on every GPU of this machine, K for the costliest of
    `configs` (ablation.pack; 1 without a GPU)."""
    if setting != "auto":
        return int(setting)
    if not torch.cuda.is_available() or not configs:
        return 1
    return sum(min(auto_cells_per_gpu(c, gpu_memory(i)) for c in configs) for i in range(torch.cuda.device_count()))


def claim(root: Path, exp: Experiment) -> Cell | None:
    """Under the lock: the next to-do cell, recorded in its job.json as run by this process."""
    folder = store.experiment_dir(root, exp.name)
    with store.locked(folder / store.LAUNCH_LOCK):
        cell = next((r.cell for r in statuses(root, exp) if r.state == TODO), None)
        if cell is not None:
            store.write_json(
                folder / cell.id / store.JOB,
                {
                    "executor": "local",
                    "pid": os.getpid(),
                    "started": process_start(os.getpid()),
                    "host": socket.gethostname(),
                    "submitted": time.time(),
                },
            )
    return cell


def work(root: Path, exp: Experiment, threads: int = 0, log: Callable[[str], None] = print) -> dict[str, str]:
    """Claim and run to-do cells until none is left; a failing cell is recorded and skipped.

    A signal stops the current cell at a step boundary with a checkpoint; the next launch resumes it.
    """
    if threads:
        torch.set_num_threads(threads)
    folder = store.experiment_dir(root, exp.name)
    outcome: dict[str, str] = {}
    interrupt = Interrupt()
    with interrupt_on_signals(interrupt):
        while not interrupt.requested and (cell := claim(root, exp)) is not None:
            d = folder / cell.id
            started = sum(r.state != TODO for r in statuses(root, exp))  # this one included, by any worker
            log(f"[{started}/{len(exp.cells)}] {exp.name}: running {cell.label} ({cell.id})")
            lost: store.LockLost | None = None
            try:
                result = run_cell(cell.config, d, interrupt, show_progress=False)
                outcome[cell.id] = result["status"]
                metric = result["metrics"].get(PRIMARY_METRIC)
                log(
                    f"cell {cell.label} ({cell.id}): {result['status']}"
                    + (f", {PRIMARY_METRIC}={metric:.4f}" if metric is not None else f" ({result.get('reason')})")
                )
            except Preempted as stop:
                outcome[cell.id] = INTERRUPTED
                log(f"cell {cell.label} ({cell.id}) stopped: {stop}. Launch again to resume.")
            except store.LockLost as err:
                lost = err
                outcome[cell.id] = f"stopped: {err}"
                log(f"cell {cell.label} ({cell.id}) stopped: {err}")
            except Exception as err:  # noqa: BLE001 - run_cell has recorded it in the cell's result.json
                outcome[cell.id] = f"failed: {type(err).__name__}: {err}"
                log(f"cell {cell.label} ({cell.id}) failed: {type(err).__name__}: {err}")
            finally:
                if lost is None:  # else the folder was deleted: a job.json there now is another run's
                    (d / store.JOB).unlink(missing_ok=True)
    return outcome


def bind_worker_to_gpu(counter: Any) -> None:
    """A worker process's first call: the i-th worker uses GPU i mod the GPU count ('cuda' means it)."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())


def _worker(root: Path, exp: Experiment, threads: int, gpu_counter: Any, report: Connection) -> None:
    bind_worker_to_gpu(gpu_counter)  # worker i on GPU i mod the GPU count
    report.send(work(root, exp, threads))
    report.close()


def run_local(root: Path, exp: Experiment, workers: int = 1, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the to-do cells on this machine, `workers` processes at a time (CPU threads split among them,
    worker i on GPU i mod the GPU count, so several share each GPU).

    Workers are spawned, not forked: a fork of a process that has run torch can deadlock. A signal
    to this process (a supervisor, `timeout`, Ctrl-C) is passed on to every worker, which stops its
    cell at the next step with a checkpoint and claims no other.
    """
    if workers <= 1:
        return work(root, exp, log=log)
    threads = max(1, (os.cpu_count() or 1) // workers)
    spawn = multiprocessing.get_context("spawn")
    procs, reports = [], []
    gpu_counter = spawn.Value("i", 0)
    for _ in range(workers):
        receive, send = spawn.Pipe(duplex=False)
        procs.append(spawn.Process(target=_worker, args=(root, exp, threads, gpu_counter, send)))
        reports.append((receive, send))

    stops: list[int] = []

    def forward(num: int, _frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, num)

    outcome: dict[str, str] = {}

    def stop(num: int, frame: Any) -> None:
        stops.append(num)
        forward(num, frame)

    with handling(STOP_SIGNALS, stop):
        for p, (_, send) in zip(procs, reports):
            p.start()
            send.close()  # the worker holds the only writing end: its exit ends our read
            if stops:  # a signal came while the workers were starting
                forward(stops[0], None)
        for p, (receive, _) in zip(procs, reports):
            with contextlib.suppress(EOFError):  # a worker killed before it reported
                outcome.update(receive.recv())
            p.join()
    return outcome
