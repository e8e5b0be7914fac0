"""The jobs Slurm runs: one cell (CellJob, DDP over its tasks) or a pack of cells (PackJob), both on
one requeue base (RequeueJob).

A job that receives USR2 (preemption, the time limit), also while it starts, has its cells
checkpoint at their next step boundary and then requeues itself; the new run resumes them
bit-exactly. SIGTERM (a plain `scancel`; Slurm's own preemption) stops a cell at its next step
boundary with a checkpoint and no requeue.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch

from ..cell import Interrupt, Preempted, run_cell
from ..config import CellConfig, from_dict
from ..names import FINISHED, INTERRUPTED
from ..pack import auto_cells_per_gpu, gpu_memory, run_pack
from .entry import release, requeue

# How long a rank waits at a collective: rank 0 alone runs the probes (every `train.log_every` epochs
# and at the end) while the others wait; on a streamed ImageNet-size folder that outlasts NCCL's
# 10-minute default, and a timed-out collective kills the job.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Stop:
    """The signals a job received, as an interrupt of its cells; `submitit_requeue` is submitit's own USR2
    handler (calls checkpoint(), `scontrol requeue`, exits), kept aside until the cells have checkpointed."""

    interrupt: Interrupt
    submitit_requeue: Any
    received: set[int] = field(default_factory=set)

    def handle(self, num: int, _frame: Any) -> None:
        self.received.add(num)
        self.interrupt.request(
            "preemption or time-limit signal (USR2)"
            if num == signal.SIGUSR2
            else f"stopped by {signal.Signals(num).name}"
        )

    @property
    def cancelled(self) -> bool:
        """SIGTERM came (a plain scancel, Slurm's own preemption): checkpoint, but no requeue."""
        return signal.SIGTERM in self.received

    def requeue(self) -> None:
        """Requeue the job through submitit; exits the process once the job is requeued."""
        if callable(self.submitit_requeue):
            requeue(self.submitit_requeue)


class RequeueJob(submitit.helpers.Checkpointable):
    """A submitit Checkpointable whose cells checkpoint on USR2 before it requeues (see the module doc).

    Its state lives in the `Stop` that `listen` returns, never on the job: submitit pickles the job to
    requeue it."""

    @staticmethod
    def listen(*also: int) -> Stop:
        """Turn USR2 (and the signals `also`) into a request to checkpoint; a USR2 held since the
        process started (ablation.slurm.entry) reaches the handler now."""
        stop = Stop(Interrupt(), signal.getsignal(signal.SIGUSR2))
        for num in (signal.SIGUSR2, *also):
            signal.signal(num, stop.handle)
        release()
        return stop


class CellJob(RequeueJob):
    """The Slurm job of one cell: resumes from its checkpoint; USR2 checkpoints and requeues,
    SIGTERM checkpoints and exits.

    More than one task runs DDP (gloo on CPU, NCCL on GPU): each rank trains on its shard of
    the global batch and rank 0 writes the files.
    """

    def __call__(self, config: dict, folder: str) -> dict:
        env = submitit.JobEnvironment()
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:  # without CPU binding every task would use all of the node's cores
            torch.set_num_threads(threads)
        stop = self.listen(signal.SIGTERM)
        with _distributed(env):
            try:
                result = run_cell(from_dict(CellConfig, config), Path(folder), stop.interrupt)
            except Preempted as stopped:
                if stop.cancelled:
                    sys.exit(f"rank {env.global_rank}: {stopped}")
                if env.global_rank != 0:
                    sys.exit(f"rank {env.global_rank}: preempted; rank 0 requeues the job")
                stop.requeue()
                raise
        if result["status"] != FINISHED:
            raise RuntimeError(f"cell failed: {result.get('reason')}")
        return {"status": result["status"], "metrics": result["metrics"]}


class PackJob(RequeueJob):
    """The Slurm job of a pack: its cells, K at a time, on the job's GPUs (ablation.pack).

    On USR2 every cell checkpoints, then the job requeues itself and the new run resumes the
    unfinished cells. Raises when a cell failed, so Slurm records it.
    """

    def __call__(self, configs: list[dict], folders: list[str], cells_per_gpu: int) -> dict:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        per_gpu = cells_per_gpu or (auto_cells_per_gpu(from_dict(CellConfig, configs[0]), gpu_memory()) if gpus else 1)
        at_once = min(len(configs), per_gpu * max(1, gpus))
        stop = self.listen()
        _log(f"pack of {len(configs)} cells, {at_once} at once on {gpus or 'no'} GPU(s)")
        outcome = run_pack(configs, folders, at_once, stop.interrupt, gpus, _threads_each(at_once), _log)
        if stop.interrupt.requested and INTERRUPTED in outcome.values():
            stop.requeue()
        failed = {Path(f).name: why for f, why in outcome.items() if why != FINISHED}
        if failed:
            raise RuntimeError(f"cells did not finish: {failed}")
        return {"status": FINISHED, "cells": len(folders)}


def _threads_each(at_once: int) -> int:
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or os.cpu_count() or 1
    return max(1, cpus // max(1, at_once))


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


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
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
