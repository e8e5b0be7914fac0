"""Faults an operator meets: a cell's files broken or swapped under it, a reused --out, a full disk.
Each ends in one line that names the file and leaves the cell resumable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ablation import launch, store
from ablation.cell import run_cell
from ablation.cli import main
from ablation.config import build_config
from ablation.grid import load_experiment
from ablation.names import CORRUPT, FINISHED

TINY = {
    "data": {"n_train": 128, "n_test": 64, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"knn_k": 10, "random_init": False},
}


def one_cell(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "exp", "cell": TINY, "grid": {"kind": "pairwise", "ops": ["crop"]}}))
    exp = load_experiment(str(path))
    return exp, tmp_path / "results" / exp.name / exp.cells[0].id


@pytest.mark.slow
@pytest.mark.parametrize("bad_row", ['{"epoch": 2, "wall_s": 1.', "{}"])
def test_a_broken_metrics_log_makes_the_cell_corrupt_and_retry_resumes_it(tmp_path, bad_row):
    exp, cell = one_cell(tmp_path)
    root = tmp_path / "results"
    launch.launch(root, exp, "local", log=lambda _: None)
    reference = store.read_result(cell)
    # the run was cut after its last checkpoint, its metrics.jsonl cut short
    (cell / store.RESULT).unlink()
    rows = store.metrics_path(cell).read_text().splitlines()
    store.metrics_path(cell).write_text(rows[0] + "\n" + bad_row + "\n")
    launch.launch(root, exp, "local", log=lambda _: None)
    broken = store.read_result(cell)
    assert broken["status"] == CORRUPT and broken["files"] == [store.METRICS_LOG]
    assert str(store.metrics_path(cell)) in broken["reason"]
    assert "line 2" in broken["reason"] and "\n" not in broken["reason"]
    launch.launch(root, exp, "local", retry=True, log=lambda _: None)
    again = store.read_result(cell)
    assert again["status"] == FINISHED and again["metrics"] == reference["metrics"]
    assert any(p.name.endswith(store.METRICS_LOG) for p in (cell / store.ATTEMPTS).iterdir())


RUN = [
    "--set",
    "data.n_train=128",
    "--set",
    "data.n_test=64",
    "--set",
    "data.size=16",
    "--set",
    "model.width=8",
    "--set",
    "model.head_hidden=32",
    "--set",
    "model.out_dim=16",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=64",
    "--set",
    "eval.knn_k=10",
    "--set",
    "eval.random_init=false",
]


@pytest.mark.slow
def test_run_refuses_an_out_folder_of_another_cell_unless_asked_to_replace_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *RUN, "--out", str(out)]) == 0
    first = store.read_result(out)
    capsys.readouterr()
    other = [*RUN, "--set", "augment.views=rotate", "--set", "loss.temperature=0.2"]
    assert main(["run", *other, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "augment.views, loss.temperature" in err and "--replace" in err
    assert store.read_result(out) == first  # nothing touched
    assert main(["run", *RUN, "--out", str(out)]) == 0  # the same cell: its result, as before
    assert main(["run", *other, "--out", str(out), "--replace"]) == 0
    result = store.read_result(out)
    assert result["config"]["augment"]["views"] == "rotate" and result["id"] != first["id"]
    moved = sorted(p.name.split("-", 2)[-1] for p in (out / store.ATTEMPTS).iterdir())
    assert {store.RESULT, store.CHECKPOINT, store.CONFIG, store.METRICS_LOG} <= set(moved)


@pytest.fixture
def disk(tmp_path):
    """A small file system of its own (tmpfs), to fill or make read-only: `disk(options)` remounts it."""
    root = tmp_path / "disk"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(root)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")

    def remount(options: str) -> Path:
        subprocess.run(["mount", "-o", f"remount,{options}", str(root)], check=True)
        return root

    yield remount
    subprocess.run(["umount", str(root)], check=True)


def one_line_error(capsys, command: str) -> str:
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after the progress bar, if any
    assert err.startswith(f"ablate {command}: error: ") and "Traceback" not in stderr
    return err


def test_a_read_only_results_folder_is_one_line_and_exit_2(tmp_path, disk, capsys):
    exp, _ = one_cell(tmp_path)
    path = str(exp.path)
    root = disk("rw")
    launch.prepare(root, exp)  # the grid's folder exists; nothing can be written any more
    disk("ro")
    for argv in (
        ["grid", path, "--executor", "local", "--results", str(root)],
        ["collect", path, "--results", str(root)],
        ["run", *RUN, "--out", str(root / "run")],
    ):
        assert main(argv) == 2, argv
        err = one_line_error(capsys, argv[0])
        assert "cannot write there (Read-only file system" in err and str(root) in err


def test_a_full_results_folder_is_one_line_and_exit_2(tmp_path, disk, capsys):
    exp, _ = one_cell(tmp_path)
    root = disk("rw")
    with open(root / "filler", "wb") as f, pytest.raises(OSError, match="No space left"):
        f.write(b"x" * 256 * 1024)
    assert main(["grid", str(exp.path), "--executor", "local", "--results", str(root)]) == 2
    err = one_line_error(capsys, "grid")
    assert f"{root / exp.name}: the disk is full (No space left on device while writing" in err


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_names_the_checkpoint_and_the_cell_resumes(tmp_path, disk, capsys):
    reference = tmp_path / "reference"
    assert main(["run", *RUN, "--out", str(reference)]) == 0
    out = disk("rw") / "run"  # room for the cell's small files, not for its checkpoint
    capsys.readouterr()
    assert main(["run", *RUN, "--out", str(out)]) == 2
    err = one_line_error(capsys, "run")
    assert f"{out}: the disk is full (No space left on device while writing checkpoint.pt)" in err
    result = store.read_result(out)
    assert result["reason"] == f"OSError: [Errno 28] No space left on device: '{out / store.CHECKPOINT}'"
    assert not (out / store.CHECKPOINT).exists() and not list(out.glob(".*.tmp"))
    disk("size=1m")
    assert main(["run", *RUN, "--out", str(out)]) == 0
    assert store.read_result(out)["metrics"] == store.read_result(reference)["metrics"]


class DeleteFolder:
    """An interrupt that never fires but deletes the cell's folder after `steps` steps (an operator's rm -r)."""

    reason = "never"

    def __init__(self, folder: Path, steps: int):
        self.folder, self.left = folder, steps

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left == 0:
            shutil.rmtree(self.folder)
        return False


@pytest.mark.slow
def test_a_cell_whose_folder_is_deleted_stops_without_writing_and_a_new_run_owns_it(tmp_path):
    cfg = build_config(
        {},
        [
            f"{k}={v}"
            for k, v in (
                ("data.n_train", 128),
                ("data.n_test", 64),
                ("data.size", 16),
                ("model.width", 8),
                ("model.head_hidden", 32),
                ("model.out_dim", 16),
                ("train.epochs", 2),
                ("train.batch_size", 64),
                ("eval.knn_k", 10),
                ("eval.random_init", "false"),
            )
        ],
    )
    out = tmp_path / "cell"
    with pytest.raises(store.LockLost, match="removed or replaced"):
        run_cell(cfg, out, interrupt=DeleteFolder(out, 1), show_progress=False)
    assert not out.exists()  # not recreated without its identity and lock
    assert run_cell(cfg, out, show_progress=False)["status"] == FINISHED
