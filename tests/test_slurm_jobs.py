"""The one requeue base of Slurm jobs (ablation.slurm.jobs), without a cluster: a USR2 that came while the
job process started reaches the cells' interrupt once the job listens; SIGTERM marks the job cancelled
(checkpoint, no requeue); the jobs pickle, as submitit needs to requeue them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, pickle, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # as ablation.slurm.entry does first
os.kill(os.getpid(), signal.SIGUSR2)  # preemption while the process starts: held
from ablation.slurm import jobs
for job in (jobs.CellJob(), jobs.PackJob()):
    pickle.loads(pickle.dumps(job))
stop = jobs.RequeueJob.listen(signal.SIGTERM)
print(stop.interrupt.requested, stop.cancelled, stop.interrupt.reason)
os.kill(os.getpid(), signal.SIGTERM)
print(stop.cancelled, stop.interrupt.reason)
"""


@pytest.mark.slow
def test_a_held_usr2_reaches_the_job_and_sigterm_cancels_it():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["True False preemption or time-limit signal (USR2)", "True stopped by SIGTERM"]
