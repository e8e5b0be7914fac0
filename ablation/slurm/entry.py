"""The process Slurm starts for a cell: submitit's entry point, with USR2 held from the first line
and a clean exit. `command()` is what the launcher gives submitit as its `python`.

- USR2 (preemption, the time limit, `scancel --signal=USR2`) can come at any moment, also while
  the process starts (Slurm retries a refused signal until the requeued run starts, so it lands
  exactly then). Before a handler exists its default action kills the job and sacct says FAILED.
  So a shell ignores USR2 from its first instruction until Python runs this module, which blocks
  it from its own first line; the cell installs its handler and calls `release()`, and a signal
  that came in the meantime is delivered to that handler then: the cell checkpoints and requeues.
- At interpreter exit torch's C++ destructors sometimes abort a process that ran a process group
  (SIGABRT after all the work is done, so sacct says FAILED for a finished cell). Once submitit has
  stored the job's outcome, the process flushes its output and leaves with os._exit.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":  # the first thing the process does (ablation and ablation.slurm import nothing)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})

import os
import shlex
import sys
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType


def command() -> str:
    """submitit's `python` for the cell's tasks; submitit appends `-u -m submitit.core._submit FOLDER`."""
    script = 'trap "" USR2; exec "$0" -u -m ablation.slurm.entry "$@"'
    return f"/bin/sh -c {shlex.quote(script)} {shlex.quote(sys.executable)}"


def release() -> None:
    """Let USR2 through again, to the handler just installed (a held one is delivered now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})


def requeue(handler: Callable[[int, FrameType | None], object]) -> None:
    """Call submitit's USR2 handler (checkpoint, `scontrol requeue`, exit) with USR2 and TERM ignored.

    `scontrol requeue` is a child of this process, and on a requeue Slurm sends SIGTERM to every
    process of the job, scontrol included, while a USR2 that scancel repeats reaches it too: either
    killed it mid-call, and the requeue that Slurm had done counted as a failed run. A signal
    ignored here is ignored in the child as well; this process exits right after anyway.
    """
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    handler(signal.SIGUSR2, None)


def main(argv: list[str]) -> int:
    """Run the submitit job in folder argv[-1]; the exit code (what Slurm records)."""
    from submitit.core.submission import process_job

    try:
        process_job(argv[-1])
    except SystemExit as stop:  # submitit exits this way after a requeue; a cancelled cell too
        if isinstance(stop.code, int) or stop.code is None:
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (recorded by submitit already; print it for the log)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)
