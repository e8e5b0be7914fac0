"""`ablate status` with progress: the table and --json say the same about every cell; --watch ends
by itself when a real local grid has ended."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ablation import launch, status, store
from ablation.cli import main
from ablation.grid import load_experiment

TINY = {
    "data": {"n_train": 256, "n_test": 128, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"knn_k": 20, "random_init": False},
}
CLI = [sys.executable, "-c", "import sys; from ablation.cli import main; sys.exit(main())"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def experiment(tmp_path: Path, ops: list[str], epochs: int = 2) -> Path:
    path = tmp_path / "exp.yaml"
    cell = {**TINY, "train": {**TINY["train"], "epochs": epochs}}
    path.write_text(yaml.safe_dump({"name": "exp", "cell": cell, "grid": {"kind": "pairwise", "ops": ops}}))
    return path


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The status table as {id: {column: text}} (columns are separated by two or more spaces)."""
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[0])
    rows = [re.split(r"\s{2,}", line) for line in lines[1:] if not line.startswith(("total:", "..."))]
    return {r[1]: dict(zip(header, r)) for r in rows}


@pytest.mark.slow
def test_json_matches_the_table_for_every_state(tmp_path, capsys):
    path, root = experiment(tmp_path, ["crop", "color"]), tmp_path / "results"
    exp = load_experiment(str(path))
    launch.launch(root, exp, "local", log=lambda _: None)
    folder = root / exp.name
    done, running, todo, failed = (folder / c.id for c in exp.cells)
    # a cell still running (claimed by this live process, one epoch logged), one interrupted before
    # its first epoch, one failed: made from finished cells' real files
    for cell in (running, todo, failed):
        (cell / store.RESULT).unlink()
    store.write_metrics(running, store.read_metrics(running)[:1])
    store.write_json(
        running / "job.json",
        {"executor": "local", "pid": os.getpid(), "host": os.uname().nodename, "submitted": time.time()},
    )
    store.write_metrics(todo, [])
    store.write_json(failed / store.RESULT, {"status": "failed", "reason": "RuntimeError: boom"})

    assert main(["status", str(path), "--results", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert main(["status", str(path), "--results", str(root)]) == 1
    text = capsys.readouterr().out
    table = table_rows(text)
    assert doc["experiment"] == exp.name and doc["total"] == 4 and not doc["ended"]
    assert doc["totals"] == {"done": 1, "running": 1, "todo": 1, "failed": 1}
    assert [c["state"] for c in doc["cells"]] == ["done", "running", "todo", "failed"]
    assert [c["id"] for c in doc["cells"]] == list(table) == [c.id for c in exp.cells]
    for cell in doc["cells"]:
        row = table[cell["id"]]
        assert (row["label"], row["state"]) == (cell["label"], cell["state"])
        assert row["epoch"] == ("-" if cell["epoch"] is None else f"{cell['epoch']}/{cell['epochs']}")
        assert row["loss"] == ("-" if cell["loss"] is None else f"{cell['loss']:.4f}")
        assert row["img/s"] == ("-" if cell["images_per_s"] is None else f"{cell['images_per_s']:.0f}")
        assert row["linear_top1"] == ("-" if cell["linear_top1"] is None else f"{100 * cell['linear_top1']:.1f}%")
    assert doc["cells"][1]["epoch"] == 1 and doc["cells"][0]["epoch"] == 2 and doc["cells"][2]["epoch"] is None
    assert "boom" in table[failed.name]["reason"] and doc["cells"][3]["reason"] == "RuntimeError: boom"

    # ETA: the running and the todo cell are left, one runs at a time
    logs = [store.read_metrics(folder / c["id"]) for c in doc["cells"]]
    pace = statistics.median(log[-1]["wall_s"] / log[-1]["epoch"] for log in logs if log)
    tail = store.read_result(done)["wall_time_s"] - logs[0][-1]["wall_s"]
    assert doc["eta_s"] == pytest.approx((2 - 1) * pace + tail + (2 - 0) * pace + tail, abs=0.05)
    assert re.fullmatch(
        r"total: 1 done, 1 running, 1 todo, 1 failed \(of 4\); eta: \S.* \(2 cells left, 1 running\)",
        text.splitlines()[-1],
    )
    assert list(table[done.name])[:6] == ["label", "id", "state", "job", "elapsed", "linear_top1"]  # as before


@pytest.mark.slow
def test_status_of_an_ended_grid_has_no_eta(tmp_path, capsys):
    path, root = experiment(tmp_path, ["crop"], epochs=1), tmp_path / "results"
    launch.launch(root, load_experiment(str(path)), "local", log=lambda _: None)
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "total: 1 done (of 1)" and table_rows("\n".join(lines))
    assert next(iter(table_rows("\n".join(lines)).values()))["epoch"] == "1/1"


@pytest.mark.slow
def test_watch_ends_by_itself_when_the_local_grid_is_done(tmp_path):
    path, root = experiment(tmp_path, ["crop", "color"], epochs=3), tmp_path / "results"
    exp = load_experiment(str(path))
    args = [str(path), "--results", str(root)]
    watcher = subprocess.Popen(
        CLI + ["status", *args, "--watch", "--every", "0.2"],
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        grid = subprocess.run(
            CLI + ["grid", *args, "--executor", "local"], env=ENV, capture_output=True, text=True, timeout=300
        )
        assert grid.returncode == 0, grid.stderr
        out, err = watcher.communicate(timeout=60)  # ends on its own: never stopped by the test
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    tables = out.strip().split("\n\n")
    assert tables[-1].splitlines()[-1] == "total: 4 done (of 4)"
    assert {row["epoch"] for row in table_rows(tables[-1]).values()} == {"3/3"}
    assert "todo" in tables[0]  # it started before the grid and waited for it
    seen = [row for t in tables for row in table_rows(t).values() if row["state"] == status.RUNNING]
    assert seen, "no refresh showed a running cell"
    assert all(re.fullmatch(r"[0-3]/3|-", row["epoch"]) for row in seen)
    assert {r.state for r in status.statuses(root, exp)} == {status.DONE}
    assert any(line.startswith("total: ") and "; eta: " in line for line in out.splitlines())


def test_watch_returns_when_a_cell_failed(tmp_path):
    path, root = experiment(tmp_path, ["crop"], epochs=1), tmp_path / "results"
    exp = load_experiment(str(path))
    launch.prepare(root, exp)
    store.write_json(root / exp.name / exp.cells[0].id / store.RESULT, {"status": "failed", "reason": "x"})
    with open(os.devnull, "w") as sink:
        assert status.watch(root, exp, every_s=0.01, stream=sink) == 1


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"epoch": 1, "wall_s": 0.5, "lo', "line 2 is not valid JSON"),
        ("{}", "line 2 has no epoch"),
        ('{"epoch": 2}', "line 2 has no wall_s"),
    ],
)
def test_status_reports_a_bad_metrics_row_and_goes_on(tmp_path, capsys, line, why):
    path, root = experiment(tmp_path, ["crop", "color"]), tmp_path / "results"
    exp = load_experiment(str(path), check=False)
    folder = launch.prepare(root, exp)
    bad, good = folder / exp.cells[0].id, folder / exp.cells[1].id
    store.write_metrics(good, [{"epoch": 1, "wall_s": 2.0}])
    store.metrics_path(bad).write_text('{"epoch": 1, "wall_s": 1.0}\n' + line + "\n")
    assert main(["status", str(path), "--results", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["cells"][0]["log_error"].startswith(f"{store.metrics_path(bad)}: {why}")
    assert doc["cells"][1]["log_error"] is None and doc["cells"][1]["epoch"] == 1 and doc["eta_s"] is not None
    assert main(["status", str(path), "--results", str(root)]) == 1
    assert table_rows(capsys.readouterr().out)[bad.name]["epoch"] == "unreadable log"
