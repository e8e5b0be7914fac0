"""The per-epoch back-ends: W&B runs (offline: no network, no account) one per cell, continued by a resumed
cell, never failing it; a W&B key leaves the cell id alone."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from test_cell import StopAfter
from test_metrics_log import tiny

from ablation import launch, store
from ablation.cell import Preempted, run_cell
from ablation.config import build_config
from ablation.grid import load_experiment
from ablation.identity import signature
from ablation.loggers import CellRun, Logger, Loggers, MetricsFile, WandB, open_loggers

BLOCK, HEADER, RECORD = 32768, 7, 7  # W&B's run file: a LevelDB-style log of protobuf records


def wandb_records(path: Path):
    """The records of an offline run file (`run-<id>.wandb`), read with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part = path.read_bytes(), HEADER, b""
    assert data[:4] == b":W&B", path
    while pos + RECORD <= len(data):
        left = BLOCK - pos % BLOCK
        _, size, kind = struct.unpack("<IHB", data[pos : pos + RECORD]) if left >= RECORD else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            pos += left
            continue
        part += data[pos + RECORD : pos + RECORD + size]
        pos += RECORD + size
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def items(entries) -> dict:
    """{key: value} of a history or summary record (a key may be stored as its parts)."""
    return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}


def offline_runs(cell_dir: Path) -> list[dict]:
    """Each offline run under a cell folder, oldest first: id, group, name, tags, config, history, summary.
    W&B's service writes the files after `finish` returns: its teardown waits until they are complete."""
    import wandb

    wandb.teardown()
    runs = []
    for folder in sorted((cell_dir / "wandb").glob("offline-run-*")):
        run: dict = {"history": [], "summary": {}}
        for record in wandb_records(next(folder.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(
                    id=record.run.run_id,
                    group=record.run.run_group,
                    name=record.run.display_name,
                    tags=list(record.run.tags),
                    config={c.key: json.loads(c.value_json) for c in record.run.config.update},
                )
            elif kind == "history":
                run["history"].append(items(record.history.item))
            elif kind == "summary":
                run["summary"].update(items(record.summary.update))
        runs.append(run)
    return runs


@pytest.fixture
def offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # W&B's settings file: none of the user's


def test_the_wandb_keys_leave_the_cell_id_alone():
    assert signature(build_config({}, ["log.wandb=true", "log.wandb_project=p"])) == signature(build_config({}))


@pytest.mark.slow
def test_grid_with_wandb_writes_one_offline_run_per_cell(offline, tmp_path):
    path = tmp_path / "wb.yaml"
    cell = {
        "data": {"n_train": 256, "n_test": 128, "size": 16},
        "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
        "train": {"epochs": 2, "batch_size": 64},
        "eval": {"knn_k": 20, "random_init": False},
        "log": {"wandb": True},
    }
    grid = {"kind": "pairwise", "ops": ["crop", "color"]}
    path.write_text(yaml.safe_dump({"name": "wb", "cell": cell, "grid": grid}))
    exp = load_experiment(str(path))
    launch.launch(tmp_path / "results", exp, "local", log=lambda _: None)
    for c in exp.cells:
        folder = tmp_path / "results" / exp.name / c.id
        (run,) = offline_runs(folder)
        assert (run["id"], run["group"], run["name"]) == (f"{exp.name}-{c.id}", exp.name, c.label)
        assert run["config"]["cell_id"] == c.id and run["config"]["first"] == c.coords["first"]
        assert f"first={c.coords['first']}" in run["tags"]
        rows = store.read_metrics(folder)
        assert [h["_step"] for h in run["history"]] == [r["epoch"] for r in rows] == [1, 2]
        assert [h["train/loss"] for h in run["history"]] == pytest.approx([r["loss"] for r in rows])
        assert "embedding/uniform" in run["history"][0]
        result = store.read_result(folder)
        assert run["summary"]["linear_top1"] == pytest.approx(result["metrics"]["linear_top1"])
        assert run["summary"]["status"] == "finished"


@pytest.mark.slow
def test_an_interrupted_cell_continues_its_wandb_run(offline, tmp_path):
    cfg = tiny("log.wandb=true", "train.log_every=0")
    with pytest.raises(Preempted):
        run_cell(cfg, tmp_path, interrupt=StopAfter(10), show_progress=False)  # in epoch 3 of 3
    result = run_cell(cfg, tmp_path, show_progress=False)
    first, second = offline_runs(tmp_path)
    assert first["id"] == second["id"] == f"{tmp_path.name}-{signature(cfg)}"
    assert [h["epoch"] for h in first["history"]] == [1, 2] and [h["epoch"] for h in second["history"]] == [3]
    logged = first["history"] + second["history"]
    assert [h["train/loss"] for h in logged] == pytest.approx(result["losses"])
    assert "linear_top1" not in first["summary"]
    assert second["summary"]["linear_top1"] == pytest.approx(result["metrics"]["linear_top1"])


@pytest.mark.slow
def test_a_failing_wandb_leaves_the_cell_result_identical(offline, tmp_path, capsys, monkeypatch):
    import wandb

    cfg = tiny("train.log_every=0")
    plain = run_cell(cfg, tmp_path / "plain", show_progress=False)

    def broken(**_):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    logged = run_cell(tiny("train.log_every=0", "log.wandb=true"), tmp_path / "wb", show_progress=False)
    assert logged["metrics"] == plain["metrics"] and logged["losses"] == plain["losses"]
    assert logged["id"] == plain["id"] and logged["status"] == "finished"
    assert capsys.readouterr().err.count("no W&B today") == 1
    assert store.read_metrics(tmp_path / "wb")[-1]["loss"] == store.read_metrics(tmp_path / "plain")[-1]["loss"]


class Broken(Logger):
    """A back-end whose every write fails (a full disk, a server gone)."""

    def epoch(self, row: dict, groups: dict) -> None:
        raise OSError("disk full")


def test_a_failing_optional_logger_is_dropped_with_one_line(tmp_path, capsys):
    loggers = Loggers([MetricsFile(CellRun(tmp_path, build_config({}), 0, 0)), Broken()])
    for epoch in (1, 2):
        loggers.epoch({"epoch": epoch, "wall_s": 1.0 * epoch, "loss": 1.0}, {"train": {"loss": 1.0}})
    assert [r["epoch"] for r in store.read_metrics(tmp_path)] == [1, 2]
    assert capsys.readouterr().err.splitlines() == ["Broken: OSError: disk full; the cell goes on without it"]


def test_after_a_hard_kill_the_file_restarts_at_the_checkpoint_and_wandb_after_the_last_row(tmp_path):
    store.write_metrics(tmp_path, [{"epoch": e, "wall_s": 1.0 * e} for e in (1, 2, 3)])  # killed after 3, ckpt at 1
    assert CellRun.resuming(tmp_path, build_config({}), done=1).logged == 3
    assert CellRun.resuming(tmp_path / "new", build_config({}), done=0).logged == 0
    open_loggers(tmp_path, build_config({}), done=1)
    assert [r["epoch"] for r in store.read_metrics(tmp_path)] == [1]


@pytest.mark.slow
def test_wandb_continues_after_the_last_epoch_a_killed_attempt_logged(offline, tmp_path):
    logger = WandB.open(CellRun(tmp_path, build_config({}, ["log.wandb=true"]), done=1, logged=3))
    for epoch in (2, 3, 4):
        logger.epoch({"epoch": epoch}, {"train": {"loss": 1.0 / epoch}})
    logger.close()
    (run,) = offline_runs(tmp_path)
    assert [h["_step"] for h in run["history"]] == [4] and run["history"][0]["train/loss"] == 0.25
