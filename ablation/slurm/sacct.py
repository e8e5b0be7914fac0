"""Live states of Slurm jobs from one `sacct` call, and what each means for a cell.

Torch-free and submitit-free, so `ablate status` stays fast on large grids.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ..names import CANCELLED, FAILED, QUEUED, RUNNING, TIMEOUT

# sacct state -> cell state (a requeued job is queued again; PREEMPTED without requeue is a failure;
# a job that COMPLETED without a finished result.json failed)
CELL_STATE = {
    "PENDING": QUEUED,
    "REQUEUED": QUEUED,
    "REQUEUE_HOLD": QUEUED,
    "REQUEUE_FED": QUEUED,
    "RESIZING": QUEUED,
    "SUSPENDED": QUEUED,
    "RUNNING": RUNNING,
    "COMPLETING": RUNNING,
    "CONFIGURING": RUNNING,
    "STAGE_OUT": RUNNING,
    "SIGNALING": RUNNING,
    "CANCELLED": CANCELLED,
    "TIMEOUT": TIMEOUT,
    "DEADLINE": TIMEOUT,
    "COMPLETED": FAILED,
    "FAILED": FAILED,
    "NODE_FAIL": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "BOOT_FAIL": FAILED,
    "PREEMPTED": FAILED,
}


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


def parse(text: str) -> dict[str, tuple[str, str]]:
    """{job id: (state, elapsed)} from `sacct -X -n -P -o JobID,State,Elapsed` output."""
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1]:
            for jid in expand_array(parts[0]):
                states[jid] = (parts[1].split()[0], parts[2])  # "CANCELLED by 0" -> CANCELLED
    return states


def live_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
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
    return parse(out.stdout) if out.returncode == 0 else None
