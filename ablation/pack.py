"""Several cells on one GPU: how many (K), the packs of cells that one Slurm job runs, and running a pack.

A small cell leaves a large GPU mostly idle: its kernels are short and one host thread launches
them one after another. K cells in K processes on the same GPU fill the gaps. K is the smaller
of what the device memory holds and what keeps the GPU busy: a step that already costs
SATURATING_FLOP is left alone (K = 1). Both come from the cell's config (ablation.cost counts them
on the meta device), so a launcher can size packs on a machine without a GPU.

A pack is a static group of cells submitted as one Slurm job (each cell belongs to exactly one job;
its job.json names it; ablation.slurm.jobs.PackJob runs it), run as one process per cell, K at a
time. Every cell is still a normal cell: it resumes from its own checkpoint, writes its own result
atomically, and a finished one is skipped. A preemption signal reaches every cell process (and the
job forwards it): each writes its checkpoint at its next step boundary, then the job requeues itself.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import store
from .config import CellConfig, from_dict
from .cost import PROCESS_BYTES, step_cost
from .names import FINISHED, INTERRUPTED

if TYPE_CHECKING:
    from .cell import Interrupt

AUTO_MAX = 8  # cells per GPU at most when K is automatic
SATURATING_FLOP = 1e12  # a training step this costly (several ms of an H100-class GPU) keeps a GPU busy alone
MEMORY_FRACTION = 0.9  # of the device memory that the K cells may fill
PREEMPTED_EXIT = 75  # a cell process that stopped on a signal after writing its checkpoint
SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent ends
POLL_S = 0.1  # how soon the pack sees an interrupt or a cell that ended (a wait, not a busy loop)


def auto_cells_per_gpu(cfg: CellConfig, gpu_bytes: int | None = None) -> int:
    """K for cells like `cfg`: enough to keep a GPU busy, at most AUTO_MAX, and within
    MEMORY_FRACTION of `gpu_bytes` (not checked when None, e.g. on a submit host without a GPU)."""
    flops, nbytes = step_cost(cfg)
    k = min(AUTO_MAX, max(1, math.ceil(SATURATING_FLOP / max(flops, 1.0))))
    if gpu_bytes is not None:
        k = min(k, int(MEMORY_FRACTION * gpu_bytes // (nbytes + PROCESS_BYTES)))
    return max(1, k)


def gpu_memory(index: int = 0) -> int | None:
    """Total memory of CUDA device `index`, or None without a GPU."""
    return torch.cuda.get_device_properties(index).total_memory if torch.cuda.is_available() else None


def cells_per_job(cells_per_gpu: int, gpus: int, tasks: int, cfg: CellConfig) -> int:
    """How many cells one Slurm job gets: `cells_per_gpu` (0: automatic) on each of its `gpus`.

    Cells of several tasks (DDP) and CPU jobs with the automatic setting run one per job.
    """
    if tasks > 1:
        return 1
    if cells_per_gpu:
        return cells_per_gpu * max(1, gpus)
    return auto_cells_per_gpu(cfg) * gpus if gpus else 1


def packs(cells: list, cells_per_gpu: int, gpus: int, tasks: int) -> list[list]:
    """The cells (objects with a `.config`) grouped into jobs: cells of one pack size together, in
    their order, each in exactly one job (see `cells_per_job`)."""
    by_size: dict[int, list] = {}
    for cell in cells:
        by_size.setdefault(cells_per_job(cells_per_gpu, gpus, tasks, cell.config), []).append(cell)
    return [
        same[j * len(same) // n : (j + 1) * len(same) // n]  # n jobs of near-equal size
        for size, same in by_size.items()
        for n in [math.ceil(len(same) / size)]
        for j in range(n)
    ]


# ---------------------------------------------------------------- running a pack


def _end_with(parent: int) -> None:
    """Get SIGTERM when the pack's process ends, however it ends (SIGKILL included): a cell that
    outlived its job would go on training outside Slurm while a --retry waits for its lock. SIGTERM
    is one of SIGNALS, so the cell checkpoints at its next step and exits. Linux only (prctl)."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the pack ended before the line above: the signal will never come
        os.kill(os.getpid(), signal.SIGTERM)


def _cell_process(config: dict, folder: str, gpu: int | None, threads: int, parent: int) -> None:
    """One cell of a pack, in its own process; the exit code says how it ended."""
    from .cell import Interrupt, Preempted, run_cell

    interrupt = Interrupt()
    for s in SIGNALS:
        signal.signal(s, lambda num, _frame: interrupt.request(f"signal {signal.Signals(num).name}"))
    _end_with(parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # the parent started us with them blocked
    if threads:
        torch.set_num_threads(threads)
    if gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(gpu)
    try:
        result = run_cell(from_dict(CellConfig, config), Path(folder), interrupt)
        code = 0 if result["status"] == FINISHED else 1
    except Preempted as stop:
        print(f"{Path(folder).name}: {stop}", file=sys.stderr, flush=True)
        code = PREEMPTED_EXIT
    finally:  # Python restores the default action (terminate) of handled signals as it exits; ignored stay ignored
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


def _outcome(folder: str, exitcode: int | None) -> str:
    if exitcode == PREEMPTED_EXIT:
        return INTERRUPTED
    result = store.read_result(Path(folder)) or {}
    if result.get("status") == FINISHED:
        return FINISHED
    return f"failed: {result.get('reason') or f'cell process exited with code {exitcode}'}"


def run_pack(
    configs: list[dict],
    folders: list[str],
    at_once: int,
    interrupt: Interrupt,
    gpus: int = 0,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run the cells (`configs[i]` into `folders[i]`) in spawned processes, `at_once` at a time.

    A cell starts on the GPU that runs the fewest of them (none: the default device); each gets
    `threads` CPU threads.
    Finished cells are skipped. Once `interrupt.requested`, no cell starts and the running ones
    are told to checkpoint. Returns {folder: finished | interrupted | failed: why}.
    """
    spawn = multiprocessing.get_context("spawn")
    todo = [i for i, f in enumerate(folders) if (store.read_result(Path(f)) or {}).get("status") != FINISHED]
    outcome = {folders[i]: FINISHED for i in range(len(folders)) if i not in todo}
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    gpu_of: dict[int, int | None] = {}
    told = False
    while todo or running:
        while todo and len(running) < at_once and not interrupt.requested:
            i = todo.pop(0)
            gpu_of[i] = min(range(gpus), key=list(gpu_of.values()).count) if gpus else None
            old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until the child has its handlers
            try:
                running[i] = spawn.Process(
                    target=_cell_process,
                    name=f"cell-{Path(folders[i]).name}",
                    args=(configs[i], folders[i], gpu_of[i], threads, os.getpid()),
                )
                running[i].start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            log(f"cell {Path(folders[i]).name}: started (pid {running[i].pid})")
        if interrupt.requested and not told:  # a signal may reach the cells directly too: asking twice is harmless
            told = True
            outcome.update({folders[i]: INTERRUPTED for i in todo})
            todo = []
            for p in running.values():
                _signal(p, signal.SIGUSR2)
        multiprocessing.connection.wait([p.sentinel for p in running.values()], timeout=POLL_S)
        for i, p in list(running.items()):
            if p.exitcode is not None:
                p.join()
                outcome[folders[i]] = _outcome(folders[i], p.exitcode)
                log(f"cell {Path(folders[i]).name}: {outcome[folders[i]]}")
                del running[i], gpu_of[i]
    return outcome


def _signal(process: multiprocessing.process.BaseProcess, signum: int) -> None:
    if process.pid is None:  # not started
        return
    with contextlib.suppress(ProcessLookupError):  # it may have just ended
        os.kill(process.pid, signum)
