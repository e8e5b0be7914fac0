"""Grids on the real local Slurm cluster (scripts/slurm-local.sh): submission, status, cancel and
retry, USR2 preemption with a bit-exact resume, concurrent launches, validation before sbatch, DDP.

Every test submits tiny cells on the embedded data under an experiment name of its own and
cancels whatever is left of it at the end. Without a cluster the module is skipped (set
ABLATION_REQUIRE_SLURM=1 to fail instead, as CI should).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from ablation import status, store
from ablation.cli import main
from ablation.config import merge
from ablation.grid import load_experiment

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"n_train": 256, "n_test": 128, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "train": {"epochs": 1, "batch_size": 64},
    "eval": {"knn_k": 20, "random_init": False},
}
SLURM = {"cpus_per_task": 1, "gpus_per_node": 0, "timeout_min": 30}  # > 10 min: USR2 is a preemption
TIMEOUT_S = 300


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    try:
        probe = subprocess.run(
            ["bash", str(ROOT / "scripts" / "slurm-local.sh"), "status"], capture_output=True, text=True, timeout=120
        )
        ready, why = probe.returncode == 0, (probe.stdout + probe.stderr).strip().splitlines()[-1:]
    except (OSError, subprocess.TimeoutExpired) as err:
        ready, why = False, [str(err)]
    if not ready:
        message = f"no local Slurm cluster ({' '.join(why)}); start one with: bash scripts/slurm-local.sh start"
        if os.environ.get("ABLATION_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def ablate(*argv: str) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def squeue(*args: str) -> list[str]:
    """Live jobs from the controller (sacct, fed by slurmdbd, may lag by seconds): one line per array task."""
    out = subprocess.run(["squeue", "-h", "-r", *args], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


class Grid:
    """A tiny experiment file with a unique name, its results folder and helpers to follow it."""

    def __init__(self, folder: Path, name: str, grid: dict, cell: dict | None = None, slurm: dict | None = None):
        self.path, self.root = folder / f"{name}.yaml", folder / "results"
        spec = {"name": name, "cell": merge(TINY, cell or {}), "grid": grid, "slurm": {**SLURM, **(slurm or {})}}
        self.path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.exp = load_experiment(str(self.path))
        self.folder = store.experiment_dir(self.root, self.exp.name)

    def ablate(self, command: str, *extra: str) -> tuple[int, str]:
        return ablate(command, str(self.path), "--results", str(self.root), *extra)

    def rows(self) -> dict[str, status.CellStatus]:
        return {r.cell.label: r for r in status.statuses(self.root, self.exp)}

    def job(self, label: str) -> dict:
        cell = next(c for c in self.exp.cells if c.label == label)
        return json.loads((self.folder / cell.id / "job.json").read_text())

    def result(self, label: str) -> dict:
        cell = next(c for c in self.exp.cells if c.label == label)
        return json.loads((self.folder / cell.id / "result.json").read_text())

    def job_ids(self) -> dict[str, str]:
        return {c.label: self.job(c.label)["job_id"] for c in self.exp.cells}

    def diagnose(self) -> str:
        """The status table and the tail of every submitit log: what a failed test prints."""
        parts = [status.render(status.statuses(self.root, self.exp))]
        for log in sorted((self.folder / ".submitit").glob("*_log.*")):
            parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)

    def wait(self, done: Callable[[], object], what: str, every_s: float = 0.5) -> object:
        """Poll until `done()` is true (tiny cells end within seconds: poll often); returns its value."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if value := done():
                return value
            time.sleep(every_s)
        raise AssertionError(f"timed out after {TIMEOUT_S}s waiting for {what}\n{self.diagnose()}")

    def wait_ended(self, seen: set | None = None) -> dict[str, status.CellStatus]:
        """Wait until no cell is queued or running; `seen` collects every state passed through."""

        def ended() -> dict | None:
            rows = self.rows()
            if seen is not None:
                seen.update(r.state for r in rows.values())
            active = (status.TODO, status.QUEUED, status.RUNNING, status.UNKNOWN)
            return rows if all(r.state not in active for r in rows.values()) else None

        return self.wait(ended, "every cell to end")

    def cancel_unfinished(self) -> None:
        """Cancel this grid's live jobs except those of finished cells (which are only exiting)."""
        finished = {r.job_id for r in self.rows().values() if r.state == status.DONE}
        live = [j for j in squeue("--name", self.exp.name, "-o", "%i") if j not in finished]
        if live:
            subprocess.run(["scancel", *live], capture_output=True, timeout=60)


@pytest.fixture
def make_grid(tmp_path, monkeypatch):
    """Grid factory; every job of the grids it made is cancelled when the test ends."""
    monkeypatch.chdir(tmp_path)  # nothing a job or sbatch writes lands in the repository
    grids: list[Grid] = []

    def make(tag: str, grid: dict, **kwargs) -> Grid:
        grids.append(Grid(tmp_path, f"t-{tag}-{uuid.uuid4().hex[:6]}", grid, **kwargs))
        return grids[-1]

    yield make
    for grid in grids:
        grid.cancel_unfinished()


def assert_rows(text: str) -> list[list[str]]:
    """The columns of each cell row of a status table (label, id, state, job, elapsed, top-1, reason)."""
    lines = text.strip().splitlines()
    assert lines[0].split()[:3] == ["label", "id", "state"] and lines[-1].startswith("total: "), text
    return [line.split() for line in lines[1:-1]]


PAIRWISE = {"kind": "pairwise", "ops": ["crop", "color"]}
SEEDS = {"kind": "product", "axes": {"train.seed": [0, 1]}}


def test_pairwise_grid_completes_and_a_second_launch_submits_nothing(make_grid):
    grid = make_grid("pairwise", PAIRWISE)
    code, out = grid.ablate("grid", "--executor", "slurm")
    assert code == 0 and "launching 4 (slurm)" in out and "submitted 4 jobs" in out, out
    jobs = grid.job_ids()
    assert len(set(jobs.values())) == 4 and all("_" in j for j in jobs.values())  # one array, four tasks
    grid.wait_ended()

    code, out = grid.ablate("status")
    rows = assert_rows(out)
    assert [(r[0], r[2]) for r in rows] == [(label, "done") for label in ("crop", "crop+color", "color+crop", "color")]
    assert code == 0 and all(r[5].endswith("%") for r in rows) and "total: 4 done (of 4)" in out, out
    for label in jobs:
        assert 0.0 <= grid.result(label)["metrics"]["linear_top1"] <= 1.0

    code, out = grid.ablate("grid", "--executor", "slurm")
    assert code == 0 and "launching 0 (slurm); skipping 4 done" in out and "submitted 0 jobs" in out, out
    assert grid.job_ids() == jobs and set(squeue("--name", grid.exp.name, "-o", "%i")) <= set(jobs.values())


def test_cancelled_cell_is_resubmitted_alone_by_retry(make_grid):
    grid = make_grid("cancel", SEEDS, cell={"train": {"epochs": 10}})
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    victim, other = "seed=0", "seed=1"
    first = grid.job_ids()
    grid.wait(lambda: squeue("-j", first[victim], "-o", "%T") == ["RUNNING"], f"{victim} to run", every_s=0.1)
    subprocess.run(["scancel", first[victim]], check=True, timeout=60)
    grid.wait(lambda: grid.rows()[victim].state == status.CANCELLED, f"{victim} to show as cancelled")
    code, out = grid.ablate("status")
    states = {r[0]: r[2] for r in assert_rows(out)}
    assert code == 1 and states[victim] == "cancelled" and states[other] in ("queued", "running", "done"), out

    code, out = grid.ablate("grid", "--executor", "slurm", "--retry")
    assert code == 0 and "launching 1 (slurm)" in out, out
    again = grid.job_ids()
    assert again[other] == first[other] and again[victim] != first[victim]
    cell = next(c for c in grid.exp.cells if c.label == victim)
    assert [p.name.split("-", 2)[-1] for p in (grid.folder / cell.id / "attempts").iterdir()] == ["job.json"]

    rows = grid.wait_ended()
    assert {r.state for r in rows.values()} == {status.DONE}, grid.diagnose()
    assert grid.ablate("status")[0] == 0


@pytest.mark.parametrize("tasks", [1, 2])  # one process, and a DDP cell of two (all ranks stop at one step)
def test_usr2_checkpoints_requeues_and_resumes_bit_exactly(make_grid, tasks):
    long = {"train": {"epochs": 60, "checkpoint_every": 1000}}  # still training when the signal comes
    grid = make_grid("usr2", {"kind": "pairwise", "ops": ["crop"]}, cell=long, slurm={"tasks_per_node": tasks})
    reference = make_grid("usr2-ref", {"kind": "pairwise", "ops": ["crop"]}, cell=long, slurm={"tasks_per_node": tasks})
    assert grid.exp.cells[0].id == reference.exp.cells[0].id  # the same cell, in two experiments
    for g in (grid, reference):
        assert g.ablate("grid", "--executor", "slurm")[0] == 0
    job = grid.job("crop")
    log = Path(job["logs"])
    grid.wait(lambda: log.exists() and "pretrain" in log.read_text(), "the first training epoch", every_s=0.1)
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True, timeout=60)

    seen: set = set()
    grid.wait_ended(seen)
    reference.wait_ended()
    assert seen <= {status.RUNNING, status.QUEUED, status.DONE}, f"{seen}\n{grid.diagnose()}"
    result, uninterrupted = grid.result("crop"), reference.result("crop")
    assert result["status"] == "finished" and len(result["resumed_at"]) == 1, grid.diagnose()
    assert grid.job("crop")["job_id"] == job["job_id"]  # requeued, not resubmitted
    assert "Requeued job" in log.with_suffix(".out").read_text()
    assert result["epochs_done"] == 60 and uninterrupted["resumed_at"] == []
    assert result["losses"] == uninterrupted["losses"] and result["metrics"] == uninterrupted["metrics"]


def test_every_log_folder_exists_before_sbatch_runs(make_grid):
    """Slurm opens a task's log as the task starts, which can be milliseconds after sbatch returns: the
    folder of every --output/--error must not depend on the job id (submitit would make it only after)."""
    grid = make_grid("logs", PAIRWISE)
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    for job_id in set(grid.job_ids().values()):
        text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout
        for key in ("StdOut", "StdErr"):
            path = Path(re.search(rf"{key}=(\S+)", text).group(1))
            assert path.parent == grid.folder.resolve() / ".submitit", text
    script = next((grid.folder / ".submitit").glob("*_submission.sh")).read_text()
    for flag in re.findall(r"--(?:output|error)[ =](\S+)", script):
        assert "%" not in str(Path(flag).parent), script  # no job-id pattern in the folder
    assert {r.state for r in grid.wait_ended().values()} == {status.DONE}, grid.diagnose()


def test_usr2_to_the_batch_shell_too_requeues_and_never_fails_the_cell(make_grid):
    """`scancel --full --signal=USR2` signals the batch shell as well as the cell: the shell ignores it,
    the cell checkpoints and requeues."""
    long = {"train": {"epochs": 60, "checkpoint_every": 1000}}
    grid = make_grid("usr2-full", {"kind": "pairwise", "ops": ["crop"]}, cell=long)
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    job = grid.job("crop")
    log = Path(job["logs"])
    grid.wait(lambda: log.exists() and "pretrain" in log.read_text(), "the first training epoch", every_s=0.1)
    subprocess.run(["scancel", "--full", "--signal=USR2", job["job_id"]], check=True, timeout=60)
    seen: set = set()
    grid.wait_ended(seen)
    assert seen <= {status.RUNNING, status.QUEUED, status.DONE}, f"{seen}\n{grid.diagnose()}"
    result = grid.result("crop")
    assert result["status"] == "finished" and len(result["resumed_at"]) == 1, grid.diagnose()
    assert grid.job("crop")["job_id"] == job["job_id"]  # requeued, not resubmitted


def test_the_embedded_preset_runs_on_a_cpu_only_cluster_and_auto_says_why_it_chose_slurm(make_grid):
    """The README's first command where Slurm answers but has no GPU: the CPU preset asks for none."""
    grid = make_grid("cpu", {"kind": "pairwise", "ops": ["crop"]})
    grid.path.write_text(
        yaml.safe_dump(
            {"name": grid.path.stem, "preset": "embedded", "cell": TINY, "grid": {"kind": "pairwise", "ops": ["crop"]}}
        )
    )  # no slurm section
    grid.exp = load_experiment(str(grid.path))
    assert grid.exp.slurm.gpus_per_node == 0
    code, out = grid.ablate("grid")  # --executor auto
    assert code == 0 and "executor auto: slurm (sbatch is on PATH and the Slurm controller answers" in out, out
    assert {r.state for r in grid.wait_ended().values()} == {status.DONE}, grid.diagnose()


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_of_a_pack_ends_its_cells_and_status_never_calls_them_failed_while_they_run(make_grid):
    """The pack's process (ablation.slurm.entry, which runs K cells) killed: its cells checkpoint and end
    with it instead of training on outside Slurm; while one still holds its lock no cell is called
    failed; --retry then resumes both."""
    grid = make_grid(
        "pack-kill", SEEDS, cell={"train": {"epochs": 150, "checkpoint_every": 1}}, slurm={"cells_per_gpu": 2}
    )
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    job = grid.job("seed=0")["job_id"]
    log = grid.folder / ".submitit" / f"{job}_0_log.out"
    cell_dirs = [grid.folder / c.id for c in grid.exp.cells]
    grid.wait(
        lambda: (
            log.exists()
            and log.read_text().count("started (pid") == 2
            and all(store.read_metrics(d) for d in cell_dirs)
        ),
        "both cells to train",
        every_s=0.1,
    )
    pids = [int(p) for p in re.findall(r"started \(pid (\d+)\)", log.read_text())]
    parent = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(parent, signal.SIGKILL)
    deadline, states = time.monotonic() + 60, set()
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        held = {d.name for d in cell_dirs if store.lock_holder(d / store.CELL_LOCK)}
        states.update(r.state for r in status.statuses(grid.root, grid.exp) if r.cell.id in held)
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), f"cells outlived their pack\n{grid.diagnose()}"
    assert status.FAILED not in states, states
    code, out = grid.ablate("grid", "--executor", "slurm", "--retry")
    assert code == 0 and "launching 2 (slurm)" in out, out
    assert {r.state for r in grid.wait_ended().values()} == {status.DONE}, grid.diagnose()
    assert all(grid.result(c.label)["resumed_at"] for c in grid.exp.cells)  # from the checkpoints they wrote


def wait_for_state(job_id: str, wanted: Callable[[str], bool], timeout_s: float = 120.0) -> str:
    """Poll squeue quickly until the job's state satisfies `wanted` (or time runs out); the last state."""
    deadline, state = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        state = " ".join(squeue("-j", job_id, "-o", "%T"))
        if wanted(state):
            break
        time.sleep(0.05)
    return state


def test_usr2_at_start_up_requeues_and_never_fails_the_cell(make_grid):
    """USR2 at every awkward moment of a run's start (Python starting, imports, unpickling, data
    loading), and twice in a row the way scancel retries it into the requeued run's start-up."""
    long = {"train": {"epochs": 40, "checkpoint_every": 1000}}
    grid = make_grid("usr2-start", {"kind": "pairwise", "ops": ["crop"]}, cell=long)
    reference = make_grid("usr2-start-ref", {"kind": "pairwise", "ops": ["crop"]}, cell=long)
    for g in (grid, reference):
        assert g.ablate("grid", "--executor", "slurm")[0] == 0
    job = grid.job("crop")["job_id"]
    log = Path(grid.job("crop")["logs"])
    seen: set = set()
    grid.wait(lambda: log.exists() and "pretrain" in log.read_text(), "the first training epoch", every_s=0.1)
    # twice in a row: the second lands while the first requeues, or in the requeued run's start-up
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    retrying = subprocess.Popen(["scancel", "--signal=USR2", job], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for delay in (0.0, 0.3, 1.0, 2.5):  # after the requeued task starts
        wait_for_state(job, lambda state: state != "RUNNING", 30)
        wait_for_state(job, lambda state: state in ("RUNNING", ""))
        seen.update(r.state for r in grid.rows().values())
        time.sleep(delay)
        subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, timeout=60)
    retrying.wait(timeout=TIMEOUT_S)
    grid.wait_ended(seen)
    reference.wait_ended()
    assert seen <= {status.RUNNING, status.QUEUED, status.DONE}, f"{seen}\n{grid.diagnose()}"
    result, uninterrupted = grid.result("crop"), reference.result("crop")
    assert result["status"] == "finished" and len(result["resumed_at"]) >= 2, grid.diagnose()
    assert grid.job("crop")["job_id"] == job  # requeued, never resubmitted
    assert result["losses"] == uninterrupted["losses"] and result["metrics"] == uninterrupted["metrics"]
    states = subprocess.run(
        ["sacct", "-j", job, "-X", "-n", "-P", "-D", "-o", "State"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert "FAILED" not in states and states[-1] == "COMPLETED", states


def test_plain_scancel_stops_the_cell_at_once_and_retry_resumes_where_it_stopped(make_grid):
    """After a plain scancel the cell writes its checkpoint once and exits (not for seconds more),
    and a --retry right away resumes from that very checkpoint: never two writers on one cell."""
    grid = make_grid(
        "scancel", {"kind": "pairwise", "ops": ["crop"]}, cell={"train": {"epochs": 60, "checkpoint_every": 1}}
    )
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    first = grid.job("crop")
    log = Path(first["logs"])
    grid.wait(lambda: log.exists() and "pretrain" in log.read_text(), "the first training epoch", every_s=0.1)
    subprocess.run(["scancel", first["job_id"]], check=True, timeout=60)
    grid.wait(lambda: grid.rows()["crop"].state == status.CANCELLED, "crop to show as cancelled", every_s=0.1)
    code, out = grid.ablate("grid", "--executor", "slurm", "--retry")
    assert code == 0 and "launching 1 (slurm)" in out, out
    stopped = grid.wait(
        lambda: re.search(r"stopped by SIGTERM at epoch (\d+) step (\d+); checkpoint written", log.read_text()),
        "the cancelled run's last words",
        every_s=0.2,
    )
    assert grid.wait_ended()["crop"].state == status.DONE, grid.diagnose()
    result = grid.result("crop")
    assert result["resumed_at"][0] == {"epoch": int(stopped.group(1)), "step": int(stopped.group(2))}


def test_the_follow_command_shows_the_grid_that_was_launched(make_grid):
    grid = make_grid("follow", {"kind": "pairwise", "ops": ["crop"]})
    _, out = grid.ablate("grid", "--executor", "slurm", "--set", "model.out_dim=8")
    follow = out.strip().splitlines()[-1].split("Follow with: ", 1)[1]
    _code, table = ablate(*shlex.split(follow)[1:])
    launched = next(p.parent.name for p in grid.root.glob("*/*/job.json"))
    assert launched in table and launched not in {c.id for c in grid.exp.cells}, (follow, table)


def test_concurrent_launches_submit_each_cell_once(make_grid, tmp_path):
    grid = make_grid("concurrent", PAIRWISE, cell={"train": {"epochs": 30}})
    ablate_bin = Path(sys.executable).with_name("ablate")
    argv = [str(ablate_bin), "grid", str(grid.path), "--executor", "slurm", "--results", str(grid.root)]
    launches = [
        subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outs
    assert sorted("launching 4 (slurm)" in o for o in outs) == [False, True], outs
    assert any("launching 0 (slurm); skipping" in o for o in outs), outs
    assert sorted(squeue("--name", grid.exp.name, "-o", "%i")) == sorted(grid.job_ids().values())
    assert len(set(grid.job_ids().values())) == 4


@pytest.mark.parametrize(
    "cell, grid_ops, message",
    [
        ({}, ["crop", "colr"], r"augment.views: unknown augmentation 'colr' \(did you mean 'color'\?\); choose from: "),
        (
            {"trian": {"epochs": 1}},
            ["crop"],
            r"unknown config key 'trian' \(did you mean 'train'\?\); choose from: data,",
        ),
        ({"train": {"epochs": "two"}}, ["crop"], r"train.epochs: expected int, got 'two'"),
        ({"loss": {"temperature": -1}}, ["crop"], r"loss.temperature: -1.0 is out of range \[0.0001, "),
    ],
)
def test_invalid_experiment_fails_before_any_submission(tmp_path, monkeypatch, cell, grid_ops, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    name = f"t-invalid-{uuid.uuid4().hex[:6]}"
    path.write_text(
        yaml.safe_dump(
            {"name": name, "cell": merge(TINY, cell), "slurm": SLURM, "grid": {"kind": "pairwise", "ops": grid_ops}}
        )
    )
    code, out = ablate("grid", str(path), "--executor", "slurm", "--results", str(tmp_path / "results"))
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert re.search(rf"^ablate grid: error: {re.escape(str(path))}: .*{message}", out), out
    assert not (tmp_path / "results").exists() and squeue("--name", f"{name}-embedded") == []


def test_two_task_cell_runs_ddp_and_rank_zero_writes_the_result(make_grid):
    grid = make_grid(
        "ddp", {"kind": "pairwise", "ops": ["crop"]}, cell={"train": {"epochs": 2}}, slurm={"tasks_per_node": 2}
    )
    assert grid.ablate("grid", "--executor", "slurm")[0] == 0
    rows = grid.wait_ended()
    assert rows["crop"].state == status.DONE, grid.diagnose()
    job = grid.job("crop")["job_id"]
    logs = grid.folder / ".submitit"
    assert "global_rank=1(2)" in (logs / f"{job}_1_log.out").read_text(), grid.diagnose()
    result = grid.result("crop")
    assert result["epochs_done"] == 2 and len(result["losses"]) == 2
    assert result["config"]["model"]["sync_bn"] is True  # global batch norm over the two processes

    def states_once_ended() -> list[str] | None:  # the result is written before the processes exit
        states = subprocess.run(
            ["sacct", "-j", job, "-n", "-P", "-o", "JobID,State,ExitCode"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        running = any(s in line for line in states for s in ("|RUNNING|", "|PENDING|", "|COMPLETING|"))
        return None if not states or running else states

    states = grid.wait(states_once_ended, "the job's processes to exit")
    assert all("|COMPLETED|0:0" in line for line in states), states  # every process exited cleanly


def test_a_two_process_cell_equals_its_one_process_run(make_grid):
    """With views drawn without randomness (sobel on one view, none on the other) the two ranks' shards make
    up the one-process batch, so gathered negatives, global batch norm and averaged gradients train the same
    network: the losses agree within the tolerance of the DDP equality tests (tests/two_processes.py)."""
    fixed_views = {"augment": {"views": "sobel", "base": "none", "mode": "asymmetric"}, "train": {"epochs": 2}}
    two = make_grid("ddp-equal", {"kind": "pairwise", "ops": ["sobel"]}, cell=fixed_views, slurm={"tasks_per_node": 2})
    one = make_grid("ddp-equal-ref", {"kind": "pairwise", "ops": ["sobel"]}, cell=fixed_views)
    for g in (two, one):
        assert g.ablate("grid", "--executor", "slurm")[0] == 0
    assert two.wait_ended()["sobel"].state == status.DONE, two.diagnose()
    assert one.wait_ended()["sobel"].state == status.DONE, one.diagnose()
    ddp, alone = two.result("sobel"), one.result("sobel")
    assert len(ddp["losses"]) == 2
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(alone["losses"]))


def test_sbatch_refusal_is_a_one_line_error_and_records_no_job(make_grid):
    grid = make_grid("refused", PAIRWISE, slurm={"partition": "no-such-partition"})
    code, out = grid.ablate("grid", "--executor", "slurm")
    assert code == 2 and out.strip().splitlines()[-1].startswith("ablate grid: error: sbatch refused the jobs"), out
    assert "no-such-partition" in out and len(out.strip().splitlines()) == 2  # the launch line, the error
    assert not list(grid.folder.glob("*/job.json")) and squeue("--name", grid.exp.name) == []


def test_a_pack_job_runs_its_cells_at_once_and_each_cell_once(make_grid):
    grid = make_grid("pack", PAIRWISE, slurm={"cells_per_gpu": 2})
    code, out = grid.ablate("grid", "--executor", "slurm")
    assert code == 0 and "launching 4 (slurm)" in out and "submitted 2 jobs" in out, out
    jobs = grid.job_ids()
    assert sorted(Counter(jobs.values()).values()) == [2, 2]  # two cells in each of two jobs
    rows = grid.wait_ended()
    assert {r.state for r in rows.values()} == {status.DONE}, grid.diagnose()
    for job in set(jobs.values()):  # the job logs each cell's end after the cell has written its result
        log = grid.folder / ".submitit" / f"{job}_0_log.out"
        grid.wait(lambda: log.read_text().count(": finished") == 2, f"job {job} to log both cells' ends")  # noqa: B023
        assert "pack of 2 cells, 2 at once" in log.read_text()
    code, out = grid.ablate("grid", "--executor", "slurm")
    assert code == 0 and "launching 0 (slurm); skipping 4 done" in out and grid.job_ids() == jobs, out


def test_usr2_on_a_pack_checkpoints_its_cells_requeues_and_they_resume_bit_exactly(make_grid):
    long = {"train": {"epochs": 60, "checkpoint_every": 1000}}  # still training when the signal comes
    grid = make_grid("pack-usr2", SEEDS, cell=long, slurm={"cells_per_gpu": 2})
    alone = make_grid("pack-usr2-ref", SEEDS, cell=long, slurm={"cells_per_gpu": 1})  # same threads: 1 each
    assert [c.id for c in grid.exp.cells] == [c.id for c in alone.exp.cells]
    for g in (grid, alone):
        assert g.ablate("grid", "--executor", "slurm")[0] == 0
    (job,) = set(grid.job_ids().values())
    log = Path(grid.job("seed=0")["logs"])
    grid.wait(lambda: log.exists() and "pretrain" in log.read_text(), "a cell's first epoch", every_s=0.1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)

    seen: set = set()
    grid.wait_ended(seen)
    alone.wait_ended()
    assert seen <= {status.RUNNING, status.QUEUED, status.DONE}, f"{seen}\n{grid.diagnose()}"
    assert set(grid.job_ids().values()) == {job}  # requeued, not resubmitted
    assert "Requeued job" in log.with_suffix(".out").read_text()
    for label in ("seed=0", "seed=1"):
        packed, reference = grid.result(label), alone.result(label)
        assert packed["status"] == "finished" and len(packed["resumed_at"]) == 1, grid.diagnose()
        assert packed["losses"] == reference["losses"] and packed["metrics"] == reference["metrics"]


@pytest.mark.slow
def test_chaos_with_a_small_budget_keeps_every_invariant(tmp_path):
    """scripts/chaos.py: faults at random on a small grid; every cell finished once, as uninterrupted."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--runs", "1", "--faults", "4", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == "chaos: 1 runs, 4 faults, OK", (
        run.stdout + run.stderr
    )
