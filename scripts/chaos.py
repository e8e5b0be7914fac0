"""Faults mixed at random into a small grid on the local Slurm cluster, and the invariants checked.

    python scripts/chaos.py --runs 3 --seed 1        (bash scripts/slurm-local.sh start first)

Each run launches a fresh copy of a tiny grid (some cells alone in a job, two in a pack) and, while
it trains, injects faults drawn at random: USR2 to a job (a preemption), USR2 to the batch shell too
(`scancel --full`), a plain scancel, SIGKILL of a pack's process, a cell's metrics.jsonl cut short,
a second launch, a `--retry`, a status read. Then it drives the grid to its end with `--retry`, as
an operator would, and checks:

- every cell ends finished exactly once (its result says finished; no finished result was moved aside);
- every cell's losses and metrics equal those of an uninterrupted run of the same grid on the cluster;
- no file outside --results changes (the experiment file's folder, the repository's tracked files);
- every error is one line (no traceback from any command; `error:` lines stand alone).

Prints one line per fault and per run, and last `chaos: R runs, F faults, OK` (exit 0) or the
broken invariants (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ablation import status, store  # noqa: E402
from ablation.grid import load_experiment  # noqa: E402

CELL = {
    "data": {"n_train": 256, "n_test": 128, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "train": {"epochs": 100, "batch_size": 64, "checkpoint_every": 1},  # still training during the faults
    "eval": {"knn_k": 20, "random_init": False},
}
GRID = {"kind": "product", "axes": {"train.seed": [0, 1, 2]}}  # three cells: one alone, two in a pack
SLURM = {"cpus_per_task": 1, "gpus_per_node": 0, "timeout_min": 30, "cells_per_gpu": 2}
FAULTS = ("usr2", "usr2-full", "scancel", "kill-pack", "cut-log", "relaunch", "retry", "status")
RUN_TIMEOUT_S = 900


class Chaos:
    def __init__(self, work: Path, rng: random.Random, log=print):
        self.work, self.rng, self.log = work, rng, log
        self.errors: list[str] = []
        self.faults = 0

    # ---------------------------------------------------------------- commands

    def ablate(self, *argv: str, results: Path) -> tuple[int, str]:
        """One `ablate` command as an operator types it; its output is checked for tracebacks."""
        run = subprocess.run(
            [sys.executable, "-m", "ablation.cli", *argv, "--results", str(results)],
            capture_output=True,
            text=True,
            cwd=self.work,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out = run.stdout + run.stderr
        if "Traceback" in out:
            self.errors.append(f"`ablate {' '.join(argv)}` printed a traceback:\n{out[-2000:]}")
        for line in run.stderr.splitlines():
            if "error:" in line and not re.match(r"ablate \w+: error: \S", line):
                self.errors.append(f"`ablate {' '.join(argv)}`: an error that is not one line: {run.stderr[-800:]}")
        return run.returncode, out

    def experiment(self, name: str) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "cell": CELL, "grid": GRID, "slurm": SLURM}, sort_keys=False))
        return path

    # ---------------------------------------------------------------- faults

    def jobs(self, results: Path, exp) -> list[str]:
        ids = []
        for cell in exp.cells:
            try:
                job = store.read_job(store.experiment_dir(results, exp.name) / cell.id) or {}
            except store.Corrupt:
                continue
            if job.get("executor") == "slurm":
                ids.append(str(job["job_id"]))
        return sorted(set(ids))

    def inject(self, kind: str, path: Path, results: Path, exp) -> str:
        folder = store.experiment_dir(results, exp.name)
        jobs = self.jobs(results, exp)
        job = self.rng.choice(jobs) if jobs else None
        if kind in ("usr2", "usr2-full", "scancel") and job:
            extra = {"usr2": ["--signal=USR2"], "usr2-full": ["--full", "--signal=USR2"], "scancel": []}[kind]
            subprocess.run(["scancel", *extra, job], capture_output=True, timeout=60)
            return f"{kind} {job}"
        if kind == "kill-pack":
            for log in folder.glob(f"{store.SUBMITIT}/*_0_log.out"):
                pids = [int(p) for p in re.findall(r"started \(pid (\d+)\)", log.read_text(errors="replace"))]
                parents = {_parent(p) for p in pids} - {None, 1}
                if parents:
                    os.kill(parents.pop(), signal.SIGKILL)
                    return f"kill-pack {log.name}"
            return "kill-pack (no pack running)"
        if kind == "cut-log":
            logs = [
                p
                for c in exp.cells
                if (p := store.metrics_path(folder / c.id)).exists() and not (folder / c.id / store.RESULT).exists()
            ]
            if logs:
                log = self.rng.choice(logs)
                text = log.read_text()
                log.write_text(text[: max(1, len(text) - self.rng.randint(3, 40))])
                return f"cut-log {log.parent.name}"
            return "cut-log (no log yet)"
        if kind in ("relaunch", "retry"):
            code, out = self.ablate(
                "grid", str(path), "--executor", "slurm", *(["--retry"] if kind == "retry" else []), results=results
            )
            return f"{kind} (exit {code}: {out.strip().splitlines()[0] if out.strip() else ''})"
        code, _ = self.ablate("status", str(path), results=results)
        json_code, _ = self.ablate("status", str(path), "--json", results=results)
        return f"status (exit {code}, --json {json_code})"

    # ---------------------------------------------------------------- runs

    def reference(self) -> dict[str, dict]:
        """The grid run on the cluster without a fault (the same CPU threads per cell as the faulted
        runs, so the same floating-point sums): what every faulted run must equal."""
        path, results = self.experiment(f"chaos-ref-{os.getpid()}"), self.work / "reference"
        code, out = self.ablate("grid", str(path), "--executor", "slurm", results=results)
        exp = load_experiment(str(path))
        rows = self.drive(path, results, exp)
        _wait_gone(exp.name)  # its jobs write their last files after the results
        if code != 0 or any(r.state != status.DONE for r in rows):
            raise SystemExit(f"chaos: the reference run did not finish:\n{out}\n{status.render(rows)}")
        return {
            r.cell.label: store.read_result(store.experiment_dir(results, exp.name) / r.cell.id) or {} for r in rows
        }

    def run(self, index: int, reference: dict[str, dict], faults: int) -> None:
        path, results = self.experiment(f"chaos-{index}-{os.getpid()}"), self.work / f"results-{index}"
        exp = load_experiment(str(path))
        before = _snapshot(self.work, exclude=results)
        code, out = self.ablate("grid", str(path), "--executor", "slurm", results=results)
        if code != 0:
            self.errors.append(f"run {index}: the launch failed: {out}")
            return
        for _ in range(faults):
            time.sleep(self.rng.uniform(0.5, 4.0))
            self.log(f"  run {index}: {self.inject(self.rng.choice(FAULTS), path, results, exp)}")
            self.faults += 1
        rows = self.drive(path, results, exp)
        _wait_gone(exp.name)
        self.check(index, exp, results, rows, reference)
        after = _snapshot(self.work, exclude=results)
        if after != before:
            changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
            self.errors.append(f"run {index}: files outside --results changed: {', '.join(changed[:5])}")

    def drive(self, path: Path, results: Path, exp) -> list[status.CellStatus]:
        """Retry what failed until every cell is done (or time is up)."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            rows = status.statuses(results, exp)
            if all(r.state == status.DONE for r in rows):
                return rows
            if any(r.state in status.RETRYABLE for r in rows):
                self.ablate("grid", str(path), "--executor", "slurm", "--retry", results=results)
            time.sleep(2)
        return status.statuses(results, exp)

    def check(self, index: int, exp, results: Path, rows: list[status.CellStatus], reference: dict) -> None:
        folder = store.experiment_dir(results, exp.name)
        for row in rows:
            label, cell_dir = row.cell.label, folder / row.cell.id
            if row.state != status.DONE:
                self.errors.append(f"run {index}: cell {label} ended {row.state} ({row.reason})")
                continue
            result = store.read_result(cell_dir) or {}
            moved = [
                p
                for p in (cell_dir / store.ATTEMPTS).glob(f"*-{store.RESULT}")
                if (json.loads(p.read_text() or "{}") or {}).get("status") == store.FINISHED
            ]
            if moved:
                self.errors.append(f"run {index}: cell {label} finished more than once ({moved[0]})")
            ref = reference[label]
            if result["losses"] != ref["losses"] or result["metrics"] != ref["metrics"]:
                self.errors.append(
                    f"run {index}: cell {label} differs from the uninterrupted run "
                    f"(resumed at {result.get('resumed_at')})"
                )


def _wait_gone(name: str, timeout_s: float = 120) -> None:
    """Until no job of this name is left in the queue (running, completing or requeued)."""
    deadline = time.monotonic() + timeout_s
    while (
        time.monotonic() < deadline
        and subprocess.run(["squeue", "-h", "--name", name], capture_output=True, text=True, timeout=60).stdout.strip()
    ):
        time.sleep(1)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _snapshot(work: Path, exclude: Path) -> dict[str, tuple]:
    """Size and mtime of every file of the work folder outside `exclude` (and of the earlier runs'
    results, which a later run must not touch), plus the repository's `git status`."""
    files = {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in work.rglob("*")
        if p.is_file() and exclude not in p.parents
    }
    git = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout
    return {**files, "git status": (git,)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="faulted runs of the grid (default: 3)")
    parser.add_argument("--faults", type=int, default=5, help="faults injected per run (default: 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        chaos = Chaos(Path(tmp), rng)
        reference = chaos.reference()
        for i in range(args.runs):
            start = time.monotonic()
            chaos.run(i, reference, args.faults)
            print(
                f"chaos: run {i} ended in {time.monotonic() - start:.0f}s; {len(chaos.errors)} problems so far",
                flush=True,
            )
        for error in chaos.errors:
            print(f"chaos: BROKEN: {error}")
        print(f"chaos: {args.runs} runs, {chaos.faults} faults, {'OK' if not chaos.errors else 'FAILED'}")
        return 0 if not chaos.errors else 1


if __name__ == "__main__":
    sys.exit(main())
