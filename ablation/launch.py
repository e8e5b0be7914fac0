"""Launch an experiment's cells locally or on Slurm, each exactly once.

Launches take an exclusive lock on the experiment folder while they decide what to run and
record it (a Slurm job.json, or a local claim with the process id), so concurrent launches
never start a cell twice. Local launches claim one cell at a time and run it outside the
lock, so two of them share the work; a signal to a launch reaches its worker processes too.
A Slurm cell that receives USR2 (preemption, time limit), also while it starts, checkpoints at the
next step boundary and requeues itself; the new run resumes bit-exactly. SIGTERM (a plain
`scancel`) stops it at the next step boundary with a checkpoint and no requeue.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit
import torch

from . import legacy_ids, pack, sizing, store
from .cell import Interrupt, Preempted, run_cell
from .config import CellConfig, from_dict
from .data.folders import check as check_folder
from .data.folders import classes_key
from .grid import Cell, Experiment, cell_identity, slurm_parameters
from .names import EXECUTORS, FINISHED, PRIMARY_METRIC, RETRYABLE, TODO
from .slurm_entry import command as slurm_command
from .slurm_entry import release as release_usr2
from .slurm_entry import requeue as requeue_job
from .status import CellStatus, process_start, statuses, totals

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
# How long a rank waits at a collective: rank 0 alone runs the probes (every `train.log_every` epochs
# and at the end) while the others wait; on a streamed ImageNet-size folder that outlasts NCCL's
# 10-minute default, and a timed-out collective kills the job.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
INTERRUPTED = "interrupted"  # a local cell stopped by a signal, with a checkpoint
# The batch shell ignores USR2 (`scancel --full --signal=USR2` reaches it too, and by default it would
# die and take the job with it, unrequeued): the cell's own handler decides, in the tasks that srun runs.
BATCH_SHELL_SETUP = "trap '' USR2"


def prepare(root: Path, exp: Experiment) -> Path:
    """Write experiment.json and each cell's identity and config (idempotent)."""
    folder = store.experiment_dir(root, exp.name)
    store.write_json(folder / store.EXPERIMENT, exp.describe())
    for cell in exp.cells:
        d = folder / cell.id
        if not (d / store.CELL).exists():
            store.write_json(d / store.CELL, cell_identity(exp, cell))
            store.write_yaml(d / store.CONFIG, cell.config.to_dict())
    return folder


def locked(folder: Path) -> contextlib.AbstractContextManager[store.Lock]:
    """Exclusive lock on the experiment folder: one launch decides and records at a time."""
    return store.locked(folder / store.LAUNCH_LOCK)


def select(rows: list[CellStatus], retry: bool) -> list[CellStatus]:
    """Cells to launch now: never done or in-flight ones; failed or corrupt ones only on retry."""
    return [r for r in rows if r.state == TODO or (retry and r.state in RETRYABLE)]


def retire(folder: Path, row: CellStatus) -> None:
    """Move a failed attempt's result and job record, and a corrupt cell's unreadable files, to
    attempts/ so the cell can run again (from its checkpoint, or from scratch without one)."""
    store.retire(folder / row.cell.id, [store.RESULT, store.JOB, *row.files])


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


def interrupt_on_signals(interrupt: Interrupt, signums: tuple[int, ...] = STOP_SIGNALS
                         ) -> contextlib.AbstractContextManager[None]:
    """Turn signals into a request to checkpoint at the next step boundary (restored afterwards)."""
    return handling(signums, lambda num, _frame: interrupt.request(f"signal {signal.Signals(num).name}"))


# ---------------------------------------------------------------- local

def claim(root: Path, exp: Experiment) -> Cell | None:
    """Under the lock: the next to-do cell, recorded in its job.json as run by this process."""
    folder = store.experiment_dir(root, exp.name)
    with locked(folder):
        cell = next((r.cell for r in statuses(root, exp) if r.state == TODO), None)
        if cell is not None:
            store.write_json(folder / cell.id / store.JOB, {
                "executor": "local", "pid": os.getpid(), "started": process_start(os.getpid()),
                "host": socket.gethostname(), "submitted": time.time()})
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
                log(f"cell {cell.label} ({cell.id}): {result['status']}"
                    + (f", {PRIMARY_METRIC}={metric:.4f}" if metric is not None else f" ({result.get('reason')})"))
            except Preempted as stop:
                outcome[cell.id] = INTERRUPTED
                log(f"cell {cell.label} ({cell.id}) stopped: {stop}. Launch again to resume.")
            except store.LockLost as err:
                lost = err
                outcome[cell.id] = f"stopped: {err}"
                log(f"cell {cell.label} ({cell.id}) stopped: {err}")
            except Exception as err:  # run_cell has recorded it in the cell's result.json
                outcome[cell.id] = f"failed: {type(err).__name__}: {err}"
                log(f"cell {cell.label} ({cell.id}) failed: {type(err).__name__}: {err}")
            finally:
                if lost is None:  # else the folder was deleted: a job.json there now is another run's
                    (d / store.JOB).unlink(missing_ok=True)
    return outcome


def _worker(root: Path, exp: Experiment, threads: int, gpu_counter: Any, report: Connection) -> None:
    pack.bind_worker_to_gpu(gpu_counter)  # worker i on GPU i mod the GPU count
    report.send(work(root, exp, threads))
    report.close()


def run_local(root: Path, exp: Experiment, workers: int = 1,
              log: Callable[[str], None] = print) -> dict[str, str]:
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


# ---------------------------------------------------------------- slurm

class CellJob(submitit.helpers.Checkpointable):
    """The Slurm job of one cell: resumes from its checkpoint; USR2 checkpoints and requeues,
    SIGTERM (a plain scancel; Slurm's own preemption) checkpoints and exits.

    More than one task runs DDP (gloo on CPU, NCCL on GPU): each rank trains on its shard of
    the global batch and rank 0 writes the files.
    """

    def __call__(self, config: dict, folder: str) -> dict:
        env = submitit.JobEnvironment()
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:  # without CPU binding every task would use all of the node's cores
            torch.set_num_threads(threads)
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: calls checkpoint(), requeues, exits
        interrupt, received = Interrupt(), set()

        def stop(num: int, _frame: Any) -> None:
            received.add(num)
            interrupt.request("preemption or time-limit signal (USR2)" if num == signal.SIGUSR2
                              else f"stopped by {signal.Signals(num).name}")

        signal.signal(signal.SIGUSR2, stop)
        signal.signal(signal.SIGTERM, stop)
        release_usr2()  # a USR2 held since the process started reaches `stop` now
        with _distributed(env):
            try:
                result = run_cell(from_dict(CellConfig, config), Path(folder), interrupt)
            except Preempted as stopped:
                if signal.SIGTERM in received:  # cancelled or preempted by Slurm itself: no requeue
                    sys.exit(f"rank {env.global_rank}: {stopped}")
                if env.global_rank == 0 and callable(requeue):
                    requeue_job(requeue)  # exits the process once the job is requeued
                if env.global_rank != 0:
                    sys.exit(f"rank {env.global_rank}: preempted; rank 0 requeues the job")
                raise
        if result["status"] != FINISHED:
            raise RuntimeError(f"cell failed: {result.get('reason')}")
        return {"status": result["status"], "metrics": result["metrics"]}


def rendezvous() -> submitit.helpers.TorchDistributedEnvironment:
    """This process's place in its cell's process group, exported as torch's env:// variables from what
    Slurm sets, on one node or several: RANK (SLURM_PROCID), LOCAL_RANK (SLURM_LOCALID), WORLD_SIZE
    (SLURM_NTASKS), MASTER_ADDR (the first host of SLURM_JOB_NODELIST), MASTER_PORT (from the job id)."""
    return submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


@contextlib.contextmanager
def _distributed(env: submitit.JobEnvironment) -> Iterator[None]:
    """A process group over the job's tasks when it has more than one."""
    if env.num_tasks <= 1:
        yield
        return
    rendezvous()
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                         timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def submit_slurm(root: Path, exp: Experiment, cells: list[Cell]) -> list[str]:
    """One job array for `cells`, one job per cell or per pack of cells (ablation.pack); records each
    job id in the cell's job.json."""
    folder = store.experiment_dir(root, exp.name).resolve()  # jobs may start in another working directory
    # One log folder, made before sbatch runs: with a folder per job (.submitit/%j) submitit makes it only
    # after sbatch returns, and a task that starts first cannot open its log and fails at 0 s.
    executor = submitit.AutoExecutor(folder=folder / store.SUBMITIT, cluster="slurm",
                                     slurm_max_num_timeout=exp.slurm.max_requeues, slurm_python=slurm_command())
    executor.update_parameters(name=exp.name, slurm_setup=[BATCH_SHELL_SETUP], **slurm_parameters(exp.slurm))
    s = exp.slurm
    groups = pack.packs(cells, s.cells_per_gpu, s.gpus_per_node, s.nodes * s.tasks_per_node)  # DDP: one a job
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit echoes sbatch's errors
            jobs = [executor.submit(CellJob(), g[0].config.to_dict(), str(folder / g[0].id)) if len(g) == 1 else
                    executor.submit(pack.PackJob(), [c.config.to_dict() for c in g],
                                    [str(folder / c.id) for c in g], s.cells_per_gpu) for g in groups]
    except submitit.core.utils.FailedJobError as err:
        reason = "; ".join(str(err).strip().splitlines())
        raise ValueError(f"sbatch refused the jobs (check the slurm section): {reason}") from None
    now = time.time()
    for cells_of_job, job in zip(groups, jobs):
        for cell in cells_of_job:
            store.write_json(folder / cell.id / store.JOB, {"executor": "slurm", "job_id": job.job_id,
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
    """auto: Slurm when `sbatch` is on PATH and the controller answers, else local; says which and why."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor '{name}'; choose from: {', '.join(EXECUTORS)}")
    if name != "auto":
        return name
    if not shutil.which("sbatch"):
        chosen, why = "local", "no sbatch on PATH"
    elif slurm_answers():
        chosen, why = "slurm", "sbatch is on PATH and the Slurm controller answers (sinfo)"
    else:
        chosen, why = "local", "sbatch is installed but no Slurm controller answers (sinfo)"
    log(f"executor auto: {chosen} ({why}; choose with --executor local|slurm)")
    return chosen


def launch(root: Path, exp: Experiment, executor: str = "auto", retry: bool = False, workers: int = 1,
           log: Callable[[str], None] = print) -> dict:
    """Prepare the results folder and start every cell that needs to run; returns what happened.

    The allocation of Slurm cells (sizing.check) and image folders are checked first (one-line errors), so a
    cell that cannot fit its GPUs is never submitted and a bad data.root fails no cell."""
    executor = pick_executor(executor, log)
    if executor == "slurm":
        sizing.check(exp)
    for root_dir, classes, per_class in {key for c in exp.cells if (key := _folder_key(c.config)) is not None}:
        check_folder(root_dir, classes, per_class)
    folder = store.experiment_dir(root, exp.name)
    with locked(folder):
        legacy_ids.move(folder, exp)
        prepare(root, exp)
        rows = statuses(root, exp)
        chosen_rows = select(rows, retry)
        for row in chosen_rows:
            if row.state != TODO:
                retire(folder, row)
        cells = [r.cell for r in chosen_rows]
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
    return d.root, classes_key(d.classes), d.per_class
