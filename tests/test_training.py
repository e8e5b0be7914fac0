"""ablation.training: the one training assembly. The cell and both benchmarks run its `Training.step`
(counted through the real step, which still runs), so a benchmark's figure is the speed of a cell's step;
the whole step, online head included, never makes the host wait for the device."""

from __future__ import annotations

import importlib.util
import queue
import threading
from pathlib import Path

import pytest
import torch
from test_accel import HostTraffic

from ablation.cell import run_cell
from ablation.config import build_config
from ablation.data import load_data, load_dataset
from ablation.training import Training

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.n_train=64",
    "data.n_test=20",
    "data.size=16",
    "model.width=4",
    "model.head_hidden=16",
    "model.out_dim=8",
    "train.batch_size=16",
    "train.epochs=2",
    "train.device=cpu",
    "eval.knn_k=5",
]


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def steps_run(monkeypatch) -> list[tuple[int, int]]:
    """(epoch, step) of every `Training.step` call from now on; the real step runs."""
    calls: list[tuple[int, int]] = []
    real = Training.step

    def counted(self, x, y, epoch, step):
        calls.append((epoch, step))
        return real(self, x, y, epoch, step)

    monkeypatch.setattr(Training, "step", counted)
    return calls


def test_train_step_benchmark_times_the_cells_step_on_the_cells_setup(steps_run):
    bench = _benchmark("train_step")
    cfg = bench.our_config(16, torch.device("cpu"), seed=3, encoder_name="small_cnn", compile_setting="never")
    data, _ = load_dataset("embedded", size=16, n_train=48, n_test=10, seed=0)
    step = bench.ours(cfg, data)()
    timed = [step() for _ in range(4)]  # 3 steps an epoch: the fourth is the next epoch's first
    assert steps_run == [(0, 0), (0, 1), (0, 2), (1, 0)]
    cell = Training.setup(cfg, data, torch.device("cpu"))  # as ablation.cell runs it
    same = [cell.step(x, y, epoch, i) for epoch in (0, 1) for i, x, y in cell.epoch(epoch)][:4]
    assert all(torch.equal(a, b) for a, b in zip(timed, same)), (timed, same)


def test_device_check_times_the_cells_step(steps_run):
    check = _benchmark("device_check")
    results: queue.Queue = queue.Queue()
    cfg = build_config({}, TINY)
    check._measure(cfg.to_dict(), 2, 3, torch.get_num_threads(), threading.Barrier(1), results, True, 10.0, "")
    out = results.get_nowait()
    assert "error" not in out and out["images"] == 3 * 16 and "augment_s" in out
    assert steps_run == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]  # 2 warmup, 3 timed


def test_the_whole_step_with_the_online_head_never_makes_the_host_wait():
    cfg = build_config({}, [*TINY, "eval.linear=online", "augment.views=crop+color+blur"])
    train, _ = load_data(cfg)
    run = Training.setup(cfg, train, torch.device("cpu"))
    assert run.online is not None
    with HostTraffic() as spy:
        losses = [run.step(x, y, 0, i) for i, x, y in run.epoch(0)]
    assert len(losses) == 4 and not spy.calls, "\n".join(spy.calls)


@pytest.mark.slow  # trains a cell
def test_a_cell_runs_every_step_through_the_assembly(steps_run, tmp_path):
    result = run_cell(build_config({}, TINY), tmp_path, show_progress=False)
    assert result["status"] == "finished"
    assert steps_run == [(epoch, i) for epoch in range(2) for i in range(4)]
