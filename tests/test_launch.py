"""Local launches: every cell once, finished ones skipped, failures recorded and retried on demand;
sacct output (pending array ranges, requeues) read into cell states."""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ablation import launch, local, status, store
from ablation.cell import _held_cell
from ablation.cli import main
from ablation.grid import Cell, load_experiment
from ablation.slurm import sacct

TINY = {
    "data": {"n_train": 256, "n_test": 128, "size": 16},
    "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
    "train": {"epochs": 1, "batch_size": 64},
    "eval": {"knn_k": 20, "random_init": False},
}
# One cell fails while loading its data (no CIFAR-10 there), the other trains. (A missing image folder
# would stop the whole launch before any cell: launches check folders first.)
FAILING = {"data.name,data.root": [["cifar10", "/nonexistent/images"], ["embedded", None]]}


def experiment(tmp_path: Path, grid: dict, name: str = "exp") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "cell": TINY, "grid": grid}, sort_keys=False))
    return path


def pairwise(tmp_path: Path) -> Path:
    return experiment(tmp_path, {"kind": "pairwise", "ops": ["crop", "color"]})


def results(root: Path, exp) -> dict[str, dict | None]:
    folder = store.experiment_dir(root, exp.name)
    return {
        c.label: json.loads(p.read_text()) if (p := folder / c.id / "result.json").exists() else None for c in exp.cells
    }


@pytest.mark.slow
def test_local_grid_runs_every_cell_once_then_skips_finished(tmp_path, capsys):
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    first = launch.launch(root, exp, "local")
    started = [line.split("]")[0] + "]" for line in capsys.readouterr().out.splitlines() if "running" in line]
    assert started == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]  # the k-th cell of the grid to start
    assert sorted(first["ran"]) == sorted(c.id for c in exp.cells)
    assert set(first["ran"].values()) == {"finished"}
    assert all(r["status"] == "finished" for r in results(root, exp).values())
    assert not any((root / exp.name / c.id / "job.json").exists() for c in exp.cells)  # claims released
    assert json.loads((root / exp.name / "experiment.json").read_text())["cells"] == [c.id for c in exp.cells]
    stamps = {c.id: (root / exp.name / c.id / "result.json").stat().st_mtime_ns for c in exp.cells}
    capsys.readouterr()
    assert launch.launch(root, exp, "local")["ran"] == {}
    assert "launching 0 (local); skipping 4 done" in capsys.readouterr().out
    assert stamps == {c.id: (root / exp.name / c.id / "result.json").stat().st_mtime_ns for c in exp.cells}
    assert main(["status", str(exp.path), "--results", str(root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in table[1:-1]] == ["done"] * 4 and "%" in table[1]
    assert table[-1] == "total: 4 done (of 4)"


@pytest.mark.slow
def test_failing_cell_is_recorded_the_grid_goes_on_and_retry_reruns_only_it(tmp_path, capsys):
    exp = load_experiment(str(experiment(tmp_path, {"kind": "product", "axes": FAILING})))
    bad, good = exp.cells
    root = tmp_path / "results"
    outcome = launch.launch(root, exp, "local")["ran"]
    assert outcome[bad.id].startswith("failed: FileNotFoundError") and outcome[good.id] == "finished"
    first = results(root, exp)
    assert first[bad.label]["status"] == "failed" and "nonexistent" in first[bad.label]["reason"]
    rows = {r.cell.id: r for r in status.statuses(root, exp)}
    assert rows[bad.id].state == status.FAILED and rows[good.id].state == status.DONE
    assert main(["status", str(exp.path), "--results", str(root)]) == 1
    assert "nonexistent" in capsys.readouterr().out  # the table says why

    assert launch.launch(root, exp, "local")["ran"] == {}  # failed cells wait for --retry
    good_stamp = (root / exp.name / good.id / "result.json").stat().st_mtime_ns
    assert list(launch.launch(root, exp, "local", retry=True)["ran"]) == [bad.id]
    retired = list((root / exp.name / bad.id / "attempts").iterdir())
    assert [p.name.split("-", 2)[-1] for p in retired] == ["result.json"]
    assert json.loads(retired[0].read_text()) == first[bad.label]
    assert (root / exp.name / good.id / "result.json").stat().st_mtime_ns == good_stamp
    assert not (root / exp.name / good.id / "attempts").exists()


def _launch_in_child(path: str, root: str, ready, out) -> None:
    exp = load_experiment(path)
    ready.wait()  # both launches start together, once both have imported torch
    out.put(launch.launch(Path(root), exp, "local", log=lambda _: None)["ran"])


@pytest.mark.slow
def test_concurrent_local_launches_run_each_cell_once(tmp_path):
    path, root = pairwise(tmp_path), tmp_path / "results"
    exp = load_experiment(str(path))
    spawn = multiprocessing.get_context("spawn")  # a fork of a process that ran torch can deadlock
    ready, out = spawn.Barrier(2), spawn.Queue()
    children = [spawn.Process(target=_launch_in_child, args=(str(path), str(root), ready, out)) for _ in range(2)]
    for child in children:
        child.start()
    ran = [out.get(timeout=300) for _ in children]
    for child in children:
        child.join()
    assert not set(ran[0]) & set(ran[1]), "a cell ran in both launches"
    assert sorted([*ran[0], *ran[1]]) == sorted(c.id for c in exp.cells)
    assert all(r["status"] == "finished" for r in results(root, exp).values())


@pytest.mark.slow
def test_workers_run_each_cell_once(tmp_path):
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    ran = launch.launch(root, exp, "local", workers=2)["ran"]
    assert sorted(ran) == sorted(c.id for c in exp.cells) and set(ran.values()) == {"finished"}
    assert {r.state for r in status.statuses(root, exp)} == {status.DONE}


def test_claims_of_live_and_dead_local_processes(tmp_path):
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    launch.prepare(root, exp)
    live, dead = exp.cells[0], exp.cells[1]
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    for cell, pid in ((live, os.getpid()), (dead, child.pid)):
        (root / exp.name / cell.id / "job.json").write_text(
            json.dumps({"executor": "local", "pid": pid, "host": os.uname().nodename, "submitted": time.time()})
        )
    rows = {r.cell.id: r for r in status.statuses(root, exp)}
    assert rows[live.id].state == status.RUNNING
    assert rows[dead.id].state == status.FAILED and "without a result" in rows[dead.id].reason
    assert local.claim(root, exp).id == exp.cells[2].id  # skips the running and the failed cell
    assert [r.cell.id for r in launch.select(status.statuses(root, exp), retry=True)] == [dead.id, exp.cells[3].id]


def test_status_needs_no_torch(tmp_path):
    """`ablate status` on a big grid must stay fast: torch alone takes seconds to import."""
    path = pairwise(tmp_path)
    code = (
        "import sys; from ablation.cli import main; "
        f"code = main(['status', {str(path)!r}, '--results', {str(tmp_path / 'results')!r}]); "
        "heavy = [m for m in ('torch', 'torchvision', 'kornia', 'submitit') if m in sys.modules]; "
        "assert code == 1 and not heavy, (code, heavy)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "total: 4 todo (of 4)" in run.stdout


SACCT_OUTPUT = """\
12_0|COMPLETED|00:00:31
12_1|CANCELLED by 0|00:00:03
12_2|RUNNING|00:00:10
12_[3-5,7%2]|PENDING|00:00:00
13|REQUEUED|00:00:13
14|TIMEOUT|00:30:00
not a record
"""


def test_sacct_output_names_every_array_task():
    states = sacct.parse(SACCT_OUTPUT)
    assert states["12_1"] == ("CANCELLED", "00:00:03")
    assert {k for k, (s, _) in states.items() if s == "PENDING"} == {"12_3", "12_4", "12_5", "12_7"}
    assert states["13"][0] == "REQUEUED" and states["14"][0] == "TIMEOUT"
    assert sacct.expand_array("12_[3-5%2]") == ["12_3", "12_4", "12_5"]
    assert sacct.expand_array("12_3") == ["12_3"]


@pytest.mark.parametrize(
    "sacct_state, result, state",
    [
        ("PENDING", None, status.QUEUED),
        ("REQUEUED", None, status.QUEUED),
        ("RUNNING", None, status.RUNNING),
        ("CANCELLED", None, status.CANCELLED),
        ("TIMEOUT", None, status.TIMEOUT),
        ("COMPLETED", None, status.FAILED),  # ended without a finished result
        ("COMPLETED", {"status": "finished", "metrics": {"linear_top1": 0.5}, "wall_time_s": 3}, status.DONE),
        ("FAILED", {"status": "failed", "reason": "boom"}, status.FAILED),
    ],
)
def test_slurm_cell_states(sacct_state, result, state):
    cell = Cell("abc", "crop", {}, 0, None)
    job = {"executor": "slurm", "job_id": "12_1", "submitted": time.time()}
    assert status.cell_status(cell, result, job, {"12_1": (sacct_state, "00:00:05")}).state == state


def test_job_unknown_to_sacct_is_queued_at_first_and_lost_later():
    cell = Cell("abc", "crop", {}, 0, None)
    fresh = {"executor": "slurm", "job_id": "99", "submitted": time.time()}
    old = dict(fresh, submitted=time.time() - status.LOST_AFTER_S - 1)
    assert status.cell_status(cell, None, fresh, {}).state == status.QUEUED
    assert status.cell_status(cell, None, old, {}).state == status.FAILED


def test_without_an_answer_from_sacct_no_job_is_taken_for_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sacct on this PATH
    assert sacct.live_states(["12_1"]) is None and sacct.live_states([]) == {}
    cell = Cell("abc", "crop", {}, 0, None)
    old = {"executor": "slurm", "job_id": "12_1", "submitted": time.time() - status.LOST_AFTER_S - 1}
    row = status.cell_status(cell, None, old, None)
    assert row.state == status.UNKNOWN and launch.select([row], retry=True) == []


def test_auto_executor_is_local_without_sbatch_or_without_a_controller(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert launch.pick_executor("auto") == "local"
    assert "executor auto: local (no sbatch on PATH" in capsys.readouterr().out
    fake = tmp_path / "sbatch"  # an installed client whose controller does not answer
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact' >&2\nexit 1\n")
    (tmp_path / "sinfo").chmod(0o755)
    assert launch.pick_executor("auto") == "local"
    assert "executor auto: local (sbatch is installed but no Slurm controller answers" in capsys.readouterr().out
    with pytest.raises(ValueError, match="choose from: auto, slurm, local"):
        launch.pick_executor("pbs")


CORRUPTIONS = {
    "truncated": '{"status": "finished", "metr',
    "empty": "",
    "a list": "[1, 2]",
    "unknown status": '{"status": "done?"}',
}


def fake_results(root: Path, exp) -> None:
    """Finished results written by hand for every cell (what analysis and status read)."""
    launch.prepare(root, exp)
    for i, cell in enumerate(exp.cells):
        metrics = {
            "linear_top1": 0.3 + 0.01 * i,
            "linear_top5": 0.8,
            "knn_top1": 0.3,
            "random_init_top1": 0.2,
            "final_loss": 4.0,
        }
        store.write_json(
            root / exp.name / cell.id / "result.json",
            {
                "id": cell.id,
                "status": "finished",
                "metrics": metrics,
                "wall_time_s": 1.0,
                "images_per_s": 100.0,
                "epochs_done": 1,
            },
        )


@pytest.mark.parametrize("content", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_result_marks_its_cell_and_the_rest_of_the_grid_works(tmp_path, capsys, content):
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    fake_results(root, exp)
    bad = root / exp.name / exp.cells[1].id / "result.json"
    bad.write_text(content)
    args = [str(exp.path), "--results", str(root)]
    assert main(["status", *args]) == 1
    table = capsys.readouterr().out
    assert [line.split()[2] for line in table.splitlines()[1:-1]] == ["done", "corrupt", "done", "done"], table
    assert str(bad) in table or str(bad)[:40] in table  # the reason column names the file
    row = {r.cell.id: r for r in status.statuses(root, exp)}[exp.cells[1].id]
    assert row.state == status.CORRUPT and row.reason.startswith(str(bad)) and row.files == ("result.json",)
    assert main(["grid", *args, "--dry-run"]) == 0 and "1 corrupt" in capsys.readouterr().out
    for command in ("collect", "plot", "report"):
        assert main([command, *args]) == 0, capsys.readouterr().err
    summary = {r["id"]: r for r in csv.DictReader((root / exp.name / "summary.csv").open())}
    assert summary[exp.cells[1].id]["status"] == "corrupt" and str(bad) in summary[exp.cells[1].id]["reason"]
    assert summary[exp.cells[0].id]["status"] == "finished"
    assert f"`{exp.cells[1].id}` (crop+color, seed 0): corrupt: {bad}" in (root / exp.name / "report.md").read_text()


@pytest.mark.slow
def test_retry_moves_a_corrupt_result_aside_and_reruns_the_cell(tmp_path, capsys):
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    fake_results(root, exp)
    bad = root / exp.name / exp.cells[1].id / "result.json"
    bad.write_text(CORRUPTIONS["truncated"])
    assert launch.launch(root, exp, "local")["ran"] == {}  # corrupt cells wait for --retry, like failed ones
    assert list(launch.launch(root, exp, "local", retry=True)["ran"].values()) == ["finished"]
    assert [p.read_text() for p in (bad.parent / "attempts").iterdir()] == [CORRUPTIONS["truncated"]]
    assert json.loads(bad.read_text())["status"] == "finished"
    assert {r.state for r in status.statuses(root, exp)} == {status.DONE}


def test_a_claim_whose_process_id_was_reused_is_not_running(tmp_path):
    """A dead claimant's pid, taken by a process that lives on (here: this one), is not the claimant."""
    exp = load_experiment(str(pairwise(tmp_path)))
    root = tmp_path / "results"
    launch.prepare(root, exp)
    claim = local.claim(root, exp)
    job_path = root / exp.name / claim.id / "job.json"
    job = json.loads(job_path.read_text())
    assert job["pid"] == os.getpid() and status.pid_alive(job)
    job_path.write_text(json.dumps({**job, "started": str(int(job["started"]) - 1)}))  # an earlier process
    row = {r.cell.id: r for r in status.statuses(root, exp)}[claim.id]
    assert row.state == status.FAILED and "without a result" in row.reason


@pytest.mark.slow
def test_sigterm_to_a_local_launch_with_workers_stops_the_workers_too(tmp_path):
    path = experiment(tmp_path, {"kind": "pairwise", "ops": ["crop", "color"]})
    spec = yaml.safe_load(path.read_text())
    spec["cell"]["train"]["epochs"] = 400  # minutes of work: the launch must not wait for it
    path.write_text(yaml.safe_dump(spec))
    exp, root = load_experiment(str(path)), tmp_path / "results"
    code = "import sys; from ablation.cli import main; sys.exit(main())"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "grid",
            str(path),
            "--executor",
            "local",
            "--workers",
            "2",
            "--results",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    claims = lambda: list((root / exp.name).glob("*/job.json")) if (root / exp.name).exists() else []  # noqa: E731
    deadline = time.monotonic() + 120
    while len(claims()) < 2 and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    assert len(claims()) == 2, "both workers should be running a cell"
    time.sleep(1.0)  # into training
    launcher.send_signal(signal.SIGTERM)
    try:
        out = launcher.communicate(timeout=60)[0]
    finally:  # on failure, leave no launch and no worker behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130 and "launch again to resume" in out, out
    assert claims() == [] and not list((root / exp.name).glob("*/result.json")), out
    rows = status.statuses(root, exp)
    assert [r.state for r in rows].count(status.TODO) == 4  # stopped cells resume on the next launch


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_reported_and_retry_reruns_the_cell_from_scratch(tmp_path):
    exp = load_experiment(str(experiment(tmp_path, {"kind": "pairwise", "ops": ["crop"]})))
    root = tmp_path / "results"
    launch.prepare(root, exp)
    cell_dir = root / exp.name / exp.cells[0].id
    (cell_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert launch.launch(root, exp, "local")["ran"][exp.cells[0].id].startswith("failed: Corrupt")
    (row,) = status.statuses(root, exp)
    assert row.state == status.CORRUPT and row.reason.startswith(f"{cell_dir / 'checkpoint.pt'}: cannot be loaded")
    assert launch.launch(root, exp, "local")["ran"] == {}  # every rerun would fail the same way: wait for --retry
    assert launch.launch(root, exp, "local", retry=True)["ran"] == {exp.cells[0].id: "finished"}
    assert sorted(p.name.split("-", 2)[-1] for p in (cell_dir / "attempts").iterdir()) == [
        "checkpoint.pt",
        "result.json",
    ]
    assert json.loads((cell_dir / "result.json").read_text())["resumed_at"] == []  # from scratch


def test_a_cell_whose_job_ended_is_running_while_a_live_process_holds_its_lock(tmp_path):
    """A pack's cell that outlived its job still trains: status must not call it failed, nor --retry
    start it again (the new run would only wait for that lock)."""
    exp = load_experiment(str(pairwise(tmp_path)), check=False)
    root = tmp_path / "results"
    folder = launch.prepare(root, exp)
    cell = exp.cells[0]
    (folder / cell.id / "job.json").write_text(
        json.dumps(  # a local claim whose process has ended
            {
                "executor": "local",
                "pid": os.getpid(),
                "started": "-1",
                "host": os.uname().nodename,
                "submitted": time.time(),
            }
        )
    )
    assert {r.cell.id: r.state for r in status.statuses(root, exp)}[cell.id] == status.FAILED
    with store.locked(folder / cell.id / store.CELL_LOCK):
        row = next(r for r in status.statuses(root, exp) if r.cell.id == cell.id)
        assert row.state == status.RUNNING and f"pid {os.getpid()} still holds the cell's lock" in row.reason
        assert cell.id not in [r.cell.id for r in launch.select(status.statuses(root, exp), retry=True)]
    assert {r.cell.id: r.state for r in status.statuses(root, exp)}[cell.id] == status.FAILED
    assert not (folder / exp.cells[1].id / store.CELL_LOCK).exists()  # a status creates no lock file


@pytest.mark.parametrize("preset", ["embedded", "photos-cpu"])
def test_cpu_presets_ask_slurm_for_no_gpu(preset):
    exp = load_experiment("pairwise", preset, ["data.root=/somewhere"] if preset == "photos-cpu" else [], check=False)
    assert exp.slurm.gpus_per_node == 0


def test_a_claim_whose_process_ended_but_is_not_reaped_yet_is_not_running(tmp_path):
    """Right after a worker is killed its process lingers as a zombie until its parent reaps it."""
    exp = load_experiment(str(pairwise(tmp_path)), check=False)
    root = tmp_path / "results"
    folder = launch.prepare(root, exp)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = status.process_start(child.pid)
    (folder / exp.cells[0].id / "job.json").write_text(
        json.dumps(
            {
                "executor": "local",
                "pid": child.pid,
                "started": started,
                "host": os.uname().nodename,
                "submitted": time.time(),
            }
        )
    )
    assert status.statuses(root, exp)[0].state == status.RUNNING
    child.stdin.close()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status.statuses(root, exp)[0].state == status.FAILED  # a zombie, not reaped yet
    child.wait()


def test_cells_finished_under_their_ids_before_fingerprints_are_found_not_rerun_then_moved(
    tmp_path, monkeypatch, capsys
):
    """A folder grid launched before ids named the data: its finished cells, kept under ids that hashed
    data.root, are done for status and skipped by a launch, which moves them to their new ids; from then
    on they are found with the data at another path too. A cell still held under its old id stays there."""
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    data = {}
    for where in ("scratch", "node-local"):
        for split, name in [(s, n) for s in ("train", "test") for n in ("a", "b")]:
            (tmp_path / where / split / name).mkdir(parents=True)
            (tmp_path / where / split / name / "0.jpg").write_bytes(b"jpeg")
        data[where] = f"data.root={tmp_path / where}"
    path = experiment(tmp_path, {"kind": "product", "axes": {"loss.temperature": [0.2, 0.5, 1.0]}})
    exp = load_experiment(str(path), None, ["data.name=folder", data["scratch"]])
    root, new_ids = tmp_path / "results", [c.id for c in exp.cells]
    folder = store.experiment_dir(root, exp.name)
    for cell in exp.cells:  # what the version before fingerprints wrote
        assert cell.legacy not in (None, cell.id)
        old_config = cell.config.to_dict()
        del old_config["data"]["fingerprint"]
        store.write_yaml(folder / cell.legacy / store.CONFIG, old_config)
        store.write_json(folder / cell.legacy / store.CELL, {"id": cell.legacy, "label": cell.label})
        store.write_json(
            folder / cell.legacy / store.RESULT,
            {"id": cell.legacy, "status": "finished", "metrics": {"linear_top1": 0.5}, "wall_time_s": 1.0},
        )
    held = exp.cells[2]
    (folder / held.legacy / store.RESULT).unlink()
    store.write_json(
        folder / held.legacy / store.JOB,
        {  # claimed by a live process: this one
            "executor": "local",
            "pid": os.getpid(),
            "started": status.process_start(os.getpid()),
            "host": os.uname().nodename,
            "submitted": time.time(),
        },
    )
    assert [r.state for r in status.statuses(root, exp)] == [status.DONE, status.DONE, status.RUNNING]
    _held_cell(folder / held.legacy, held.config, replace=False)  # its run may resume there
    exp = load_experiment(str(path), None, ["data.name=folder", data["scratch"]])
    assert launch.launch(root, exp, "local") == {"executor": "local", "ran": {}}
    assert "launching 0" in capsys.readouterr().out
    assert [(folder / i).is_dir() for i in new_ids] == [True, True, False]  # the held one stays
    assert store.read_record(folder / new_ids[0] / store.CELL)["id"] == new_ids[0]
    moved = load_experiment(str(path), None, ["data.name=folder", data["node-local"]])
    assert [c.id for c in moved.cells] == new_ids
    assert [r.state for r in status.statuses(root, moved)][:2] == [status.DONE, status.DONE]
