"""Submitting a launch's cells to Slurm as one job array (through submitit), and whether a controller answers."""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from pathlib import Path

import submitit

from .. import pack, store
from ..grid import Cell, Experiment
from .config import SlurmConfig
from .entry import command
from .jobs import CellJob, PackJob

# The batch shell ignores USR2 (`scancel --full --signal=USR2` reaches it too, and by default it would
# die and take the job with it, unrequeued): the cell's own handler decides, in the tasks that srun runs.
BATCH_SHELL_SETUP = "trap '' USR2"


def executor_parameters(slurm: SlurmConfig) -> dict:
    """submitit executor parameters from the slurm section."""
    params = {
        "slurm_partition": slurm.partition,
        "gpus_per_node": slurm.gpus_per_node or None,
        "tasks_per_node": slurm.tasks_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "timeout_min": slurm.timeout_min,
        "slurm_account": slurm.account,
        "slurm_qos": slurm.qos,
        "slurm_constraint": slurm.constraint,
        "slurm_array_parallelism": slurm.array_parallelism,
        "slurm_signal_delay_s": slurm.signal_delay_s,
        "slurm_additional_parameters": slurm.extra,
        "mem_gb": slurm.mem_gb,
        "slurm_gres": slurm.gres,
        "nodes": slurm.nodes,
    }
    return {k: v for k, v in params.items() if v is not None}


def submit(root: Path, exp: Experiment, cells: list[Cell]) -> list[str]:
    """One job array for `cells`, one job per cell or per pack of cells (ablation.pack); records each
    job id in the cell's job.json."""
    folder = store.experiment_dir(root, exp.name).resolve()  # jobs may start in another working directory
    # One log folder, made before sbatch runs: with a folder per job (.submitit/%j) submitit makes it only
    # after sbatch returns, and a task that starts first cannot open its log and fails at 0 s.
    executor = submitit.AutoExecutor(
        folder=folder / store.SUBMITIT,
        cluster="slurm",
        slurm_max_num_timeout=exp.slurm.max_requeues,
        slurm_python=command(),
    )
    executor.update_parameters(name=exp.name, slurm_setup=[BATCH_SHELL_SETUP], **executor_parameters(exp.slurm))
    s = exp.slurm
    groups = pack.packs(cells, s.cells_per_gpu, s.gpus_per_node, s.nodes * s.tasks_per_node)  # DDP: one a job
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit echoes sbatch's errors
            jobs = [
                executor.submit(CellJob(), g[0].config.to_dict(), str(folder / g[0].id))
                if len(g) == 1
                else executor.submit(
                    PackJob(), [c.config.to_dict() for c in g], [str(folder / c.id) for c in g], s.cells_per_gpu
                )
                for g in groups
            ]
    except submitit.core.utils.FailedJobError as err:
        reason = "; ".join(str(err).strip().splitlines())
        raise ValueError(f"sbatch refused the jobs (check the slurm section): {reason}") from None
    now = time.time()
    for cells_of_job, job in zip(groups, jobs):
        for cell in cells_of_job:
            store.write_json(
                folder / cell.id / store.JOB,
                {"executor": "slurm", "job_id": job.job_id, "submitted": now, "logs": str(job.paths.stderr)},
            )
    return [job.job_id for job in jobs]


def controller_answers(timeout_s: float = 10.0) -> bool:
    """Whether a Slurm controller answers (`sinfo`); an installed but stopped cluster does not."""
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=timeout_s).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
