"""Cells over two nodes, on a private two-node cluster on this host (scripts/slurm-two-nodes.sh: two slurmd
under two host names): the ranks find each other through the first node's name, a two-node cell trains
as its one-process run, and USR2 requeues it and it resumes bit-exactly.

The cluster keeps no accounting (no sacct), so the tests read the cells' result files. Skipped when the
cluster cannot start (no munged: start scripts/slurm-local.sh first); ABLATION_REQUIRE_SLURM=1 fails instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from ablation.cli import main

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-two-nodes.sh"
TINY = {
    "data": {"n_train": 256, "n_test": 128, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "eval": {"knn_k": 20, "random_init": False},
    # views without randomness: the ranks' shards make up the one-process batch exactly
    "augment": {"views": "sobel", "base": "none", "mode": "asymmetric"},
}
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def conf() -> Path:
    out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        message = f"no two-node cluster: {(out.stdout + out.stderr).strip().splitlines()[-1:]}"
        if os.environ.get("ABLATION_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield Path(out.stdout.split("export SLURM_CONF=")[-1].rstrip(")\n"))
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def submit(conf, tmp_path, monkeypatch):
    """Submit a one-cell grid to the two-node cluster; returns its cell folder."""
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.chdir(tmp_path)

    def submit(tag: str, epochs: int, nodes: int) -> Path:
        name = f"t-{tag}-{uuid.uuid4().hex[:6]}"
        spec = {
            "name": name,
            "cell": {**TINY, "train": {"epochs": epochs, "batch_size": 64, "checkpoint_every": 1000}},
            "grid": {"kind": "pairwise", "ops": ["sobel"]},
            "slurm": {"nodes": nodes, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 30},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["grid", f"{name}.yaml", "--executor", "slurm", "--results", "results"])
        assert code == 0, out.getvalue()
        (cell,) = [p.parent for p in (tmp_path / "results" / f"{name}-embedded").glob("*/job.json")]
        return cell

    return submit


def finished(cell: Path) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((cell / "result.json").read_text())
            if result["status"] == "finished":
                return result
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(cell.parent.glob(".submitit/*_log.*")))
    raise AssertionError(f"{cell.name} did not finish in {TIMEOUT_S}s\n{logs}")


def rank_log(cell: Path, rank: int) -> Path:
    job = json.loads((cell / "job.json").read_text())["job_id"]
    return cell.parent / ".submitit" / f"{job}_{rank}_log.out"  # one log folder, made before sbatch


def test_a_cell_over_two_nodes_trains_as_its_one_process_run(submit):
    two, one = submit("nodes", 2, nodes=2), submit("nodes-ref", 2, nodes=1)
    spread, alone = finished(two), finished(one)
    assert "node=1(2), global_rank=1(2)" in rank_log(two, 1).read_text()
    torch.testing.assert_close(torch.tensor(spread["losses"]), torch.tensor(alone["losses"]))


def test_usr2_requeues_a_two_node_cell_and_it_resumes_bit_exactly(submit):
    cell = submit("nodes-usr2", 40, nodes=2)
    log = rank_log(cell, 0).with_suffix(".err")  # the progress bar's
    deadline = time.monotonic() + TIMEOUT_S
    while not (log.exists() and "pretrain" in log.read_text()):
        assert time.monotonic() < deadline, "no training epoch began"
        time.sleep(0.1)
    subprocess.run(
        ["scancel", "--signal=USR2", json.loads((cell / "job.json").read_text())["job_id"]], check=True, timeout=60
    )
    resumed = finished(cell)
    uninterrupted = finished(submit("nodes-usr2-ref", 40, nodes=2))
    assert len(resumed["resumed_at"]) == 1 and uninterrupted["resumed_at"] == []
    assert resumed["losses"] == uninterrupted["losses"] and resumed["metrics"] == uninterrupted["metrics"]
