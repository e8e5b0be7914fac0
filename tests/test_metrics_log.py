"""Per-epoch metrics of a cell: one row per epoch whatever interrupted it, the same rows as an
uninterrupted run; probes every log_every epochs; per-class top-1; TensorBoard only when installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_cell import StopAfter

from ablation import launch, store
from ablation.cell import Preempted, run_cell
from ablation.config import build_config
from ablation.data import load_data
from ablation.grid import load_experiment
from ablation.metrics_log import embedding_stats
from ablation.names import PER_CLASS

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "data.size=16",
    "model.width=8",
    "model.head_hidden=32",
    "model.out_dim=16",
    "train.epochs=3",
    "train.batch_size=64",
    "eval.knn_k=20",
    "augment.views=crop+color",
    "eval.random_init=false",
    "train.log_every=1",
]
STEPS = 256 // 64
TIMING = ("images_per_s", "wall_s", "time")  # the only fields that may differ between two runs


def tiny(*extra: str):
    return build_config({}, TINY + list(extra))


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted cell, checkpointing every 2 epochs."""
    out = tmp_path_factory.mktemp("full")
    return run_cell(tiny("train.checkpoint_every=2"), out, show_progress=False), out


@pytest.mark.slow
def test_rows_one_per_epoch_with_probes_equal_to_the_final_evaluation(reference):
    result, out = reference
    rows = store.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [4, 8, 12]
    assert [r["loss"] for r in rows] == pytest.approx(result["losses"], abs=1e-6)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9) and rows[0]["lr"] > 0  # warmup then cosine to 0
    for key in ("pos_sim", "align", "uniform", "images_per_s", "wall_s", "linear_top1", "knn_top1"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert all(-1 <= r["pos_sim"] <= 1 and r["uniform"] <= 0 for r in rows)
    assert rows[-1]["wall_s"] <= result["wall_time_s"]
    # the last epoch's probe is the cell's final evaluation of the same weights
    assert rows[-1]["linear_top1"] == result["metrics"]["linear_top1"]
    assert rows[-1]["knn_top1"] == result["metrics"]["knn_top1"]


@pytest.mark.slow
def test_probes_only_every_log_every_epochs(tmp_path):
    run_cell(tiny("train.log_every=2"), tmp_path, show_progress=False)
    assert ["knn_top1" in r for r in store.read_metrics(tmp_path)] == [False, True, False]


@pytest.mark.slow
def test_a_diverged_epoch_is_logged_with_a_null_loss(tmp_path):
    cfg = tiny(
        "optim.name=sgd",
        "optim.lr=1000",
        "optim.lr_scaling=linear",
        "loss.normalize=false",
        "loss.temperature=0.0001",
        "train.epochs=2",
        "train.log_every=0",
    )
    assert run_cell(cfg, tmp_path, show_progress=False)["status"] == "failed"
    rows = store.read_metrics(tmp_path)
    assert rows and rows[-1]["loss"] is None and all(r["loss"] is not None for r in rows[:-1])
    json.loads(store.metrics_path(tmp_path).read_text().splitlines()[-1], parse_constant=pytest.fail)  # strict JSON


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [2, 6, 9])  # mid-epoch 1, mid-epoch 2, mid-epoch 3 (after a checkpoint)
def test_preempted_and_resumed_cell_has_the_uninterrupted_rows(reference, tmp_path, stop_at):
    _, full = reference
    cfg = tiny("train.checkpoint_every=2")
    with pytest.raises(Preempted):
        run_cell(cfg, tmp_path, interrupt=StopAfter(stop_at), show_progress=False)
    assert [r["epoch"] for r in store.read_metrics(tmp_path)] == list(range(1, stop_at // STEPS + 1))
    run_cell(cfg, tmp_path, show_progress=False)
    assert deterministic(store.read_metrics(tmp_path)) == deterministic(store.read_metrics(full))


@pytest.mark.slow
def test_epochs_logged_after_the_last_checkpoint_are_logged_again_not_twice(tmp_path):
    """A run killed (SIGKILL) after logging epochs it never checkpointed: the resumed run starts
    from the checkpoint and logs those epochs again, replacing their rows."""
    cfg = tiny("train.checkpoint_every=3", "train.epochs=40", "train.log_every=0")
    config, out = tmp_path / "cell.yaml", tmp_path / "cell"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from ablation.cli import main; sys.exit(main())",
            "run",
            str(config),
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(store.read_metrics(out)) < 4 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = time.time()
    logged = store.read_metrics(out)[-1]["epoch"]
    checkpoint = torch.load(out / store.CHECKPOINT, weights_only=True)["state"]["epoch"]
    assert not store.read_result(out) and logged > checkpoint == 3  # killed between two checkpoints
    with pytest.raises(Preempted):  # resume, and stop in the epoch after those logged before the kill
        run_cell(cfg, out, interrupt=StopAfter((logged - checkpoint + 1) * STEPS), show_progress=False)
    rows = store.read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(1, logged + 1))
    assert all(r["time"] < killed_at for r in rows[:checkpoint])
    assert all(r["time"] > killed_at for r in rows[checkpoint:])


@pytest.mark.slow
def test_per_class_top1_averages_to_the_top1_weighted_by_class_size(reference):
    result, _ = reference
    _, test = load_data(tiny())
    per_class = result["metrics"][PER_CLASS]
    sizes = torch.bincount(test.labels, minlength=len(test.classes)).tolist()
    assert list(per_class) == test.classes
    assert len(set(per_class.values())) > 1  # not one number repeated
    weighted = sum(acc * n for acc, n in zip(per_class.values(), sizes)) / sum(sizes)
    assert weighted == pytest.approx(result["metrics"]["linear_top1"], abs=1e-6)
    on_disk = json.loads((reference[1] / store.RESULT).read_text())
    assert on_disk["metrics"][PER_CLASS] == per_class


def test_embedding_stats_against_their_definitions():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    stats = embedding_stats(z1, z2)
    n1, n2 = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)

    def uniform(z):
        d = [((z[i] - z[j]) ** 2).sum() for i in range(len(z)) for j in range(i + 1, len(z))]
        return torch.stack([torch.exp(-2 * x) for x in d]).mean().log()

    assert stats["pos_sim"].item() == pytest.approx(sum(float(a @ b) for a, b in zip(n1, n2)) / 6, abs=1e-6)
    assert stats["align"].item() == pytest.approx(2 - 2 * stats["pos_sim"].item(), abs=1e-5)
    assert stats["uniform"].item() == pytest.approx(((uniform(n1) + uniform(n2)) / 2).item(), abs=1e-5)
    same = embedding_stats(z1, z1 * 3)
    assert same["pos_sim"].item() == pytest.approx(1.0) and same["align"].item() == pytest.approx(0.0, abs=1e-6)


def _one_cell_grid(tmp_path: Path) -> tuple[Path, object]:
    path = tmp_path / "tb.yaml"
    cell = {
        "data": {"n_train": 256, "n_test": 128, "size": 16},
        "model": {"width": 8, "head_hidden": 32, "out_dim": 16},
        "train": {"epochs": 2, "batch_size": 64},
        "eval": {"knn_k": 20, "random_init": False},
    }
    path.write_text(yaml.safe_dump({"name": "tb", "cell": cell, "grid": {"kind": "pairwise", "ops": ["crop"]}}))
    root = tmp_path / "results"
    exp = load_experiment(str(path))
    launch.launch(root, exp, "local", log=lambda _: None)
    return root / exp.name, exp.cells[0]


@pytest.mark.slow
def test_tensorboard_run_per_cell_named_by_label(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, cell = _one_cell_grid(tmp_path)
    runs = [p.name for p in (folder / "tensorboard").iterdir()]
    assert runs == ["crop,seed=0"]
    events = EventAccumulator(str(folder / "tensorboard" / runs[0]))
    events.Reload()
    assert {"train/loss", "train/lr", "embedding/uniform"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in store.read_metrics(folder / cell.id)])


@pytest.mark.slow
def test_without_tensorboard_the_cell_runs_and_writes_no_events(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package looks like
    with pytest.raises(ImportError):
        import torch.utils.tensorboard  # noqa: F401
    folder, cell = _one_cell_grid(tmp_path)
    assert store.read_result(folder / cell.id)["status"] == "finished"
    assert len(store.read_metrics(folder / cell.id)) == 2 and not (folder / "tensorboard").exists()
