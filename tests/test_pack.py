"""Several cells on one device: K from the model's cost and the memory, packs that hold every cell
once, and cells run K at a time that end exactly as when run one at a time, also after an interrupt."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ablation import cost, local, pack
from ablation.cell import Interrupt, run_cell
from ablation.config import CellConfig, build_config
from ablation.grid import load_experiment

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "data.size=16",
    "model.width=8",
    "model.head_hidden=32",
    "model.out_dim=16",
    "train.batch_size=64",
    "eval.knn_k=20",
    "eval.random_init=false",
]


@dataclass
class Cell:
    id: str
    config: CellConfig


def test_auto_k_fills_a_gpu_with_small_cells_and_leaves_a_costly_one_alone():
    small = load_experiment("pairwise", "embedded").cells[0].config
    resnet = load_experiment("pairwise", "cifar10").cells[0].config
    assert cost.step_cost(resnet)[0] > pack.SATURATING_FLOP > 100 * cost.step_cost(small)[0]
    assert pack.auto_cells_per_gpu(small) == pack.AUTO_MAX and pack.auto_cells_per_gpu(resnet) == 1
    assert pack.auto_cells_per_gpu(small, 141 * 10**9) == pack.AUTO_MAX
    per_cell = cost.step_cost(small)[1] + cost.PROCESS_BYTES
    assert pack.auto_cells_per_gpu(small, int(3.5 * per_cell / pack.MEMORY_FRACTION)) == 3  # memory-bound
    assert pack.auto_cells_per_gpu(small, 10**6) == 1  # never below one
    smaller_batch = build_config({}, ["model.encoder=resnet18", "train.batch_size=128", "model.head_hidden=2048"])
    assert pack.auto_cells_per_gpu(smaller_batch) == 2  # a quarter of the batch: about a quarter of the FLOPs


def test_memory_estimate_counts_the_training_set_as_the_cell_holds_it(tmp_path):
    """The resident uint8 set in a cell's bytes: capped by data.per_class, a folder's files counted at
    its stored side, nothing when kept off the device or streamed."""

    def data(*overrides: str):
        return build_config({}, list(overrides)).data

    assert cost.resident_bytes(data("data.name=cifar10")) == 50_000 * 3 * 32 * 32
    assert cost.resident_bytes(data("data.name=cifar10", "data.per_class=100")) == 1_000 * 3 * 32 * 32
    assert cost.resident_bytes(data("data.name=cifar10", "data.resident=never")) == 0
    for split, n in (("train", 5), ("test", 1)):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / name / f"{i}.jpg").touch()  # counted, never decoded
    folder = ["data.name=folder", f"data.root={tmp_path}", "data.stored_size=48"]
    assert cost.resident_bytes(data(*folder)) == 10 * 3 * 48 * 48
    assert cost.resident_bytes(data(*folder, "data.per_class=2")) == 4 * 3 * 48 * 48
    assert cost.resident_bytes(data(*folder, "data.serve=stream")) == 0
    full, capped = (build_config({}, ["data.name=cifar10", *extra]) for extra in ([], ["data.per_class=10"]))
    assert cost.step_cost(full)[1] - cost.step_cost(capped)[1] == (50_000 - 100) * 3 * 32 * 32


def test_packs_hold_every_cell_once_in_near_equal_jobs():
    small, big = build_config({}, TINY), build_config({}, ["model.encoder=resnet18", "train.batch_size=512"])
    cells = [Cell(f"s{i}", small) for i in range(6)] + [Cell("b0", big), Cell("b1", big)]
    jobs = pack.packs(cells, 3, 1, 1)
    assert [c.id for j in jobs for c in j] == [c.id for c in cells]  # each once, in order
    assert [len(j) for j in jobs] == [2, 3, 3]  # 8 cells, at most 3 per job: 3 near-equal jobs
    assert [len(j) for j in pack.packs(cells, 0, 1, 1)] == [6, 1, 1]  # ResNet-18 at batch 512 runs alone
    assert [len(j) for j in pack.packs(cells, 0, 0, 1)] == [1] * 8  # CPU jobs: one cell each unless set
    assert [len(j) for j in pack.packs(cells, 2, 0, 1)] == [2] * 4
    assert [len(j) for j in pack.packs(cells, 4, 2, 1)] == [8]  # 4 per GPU on 2 GPUs
    assert [len(j) for j in pack.packs(cells, 0, 1, 2)] == [1] * 8  # DDP cells never share


def _alone(configs: list[CellConfig], root: Path) -> list[dict]:
    """The cells one after another in this process, with the one thread each pack cell gets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run_cell(c, root / f"alone{i}", show_progress=False) for i, c in enumerate(configs)]
    finally:
        torch.set_num_threads(threads)


def _same(a: dict, b: dict) -> bool:
    return a["metrics"] == b["metrics"] and a["losses"] == b["losses"]


@pytest.mark.slow
def test_cells_sharing_the_device_end_as_when_run_one_at_a_time(tmp_path):
    """Three cells, two at a time; the third fails (its folder does not exist) without stopping the others."""
    configs = [build_config({}, TINY + ["train.epochs=2", f"augment.views={v}"]) for v in ("crop", "crop+color")]
    bad = build_config({}, TINY + ["train.epochs=1", "data.name=folder", "data.root=/nonexistent/images"])
    folders = [str(tmp_path / f"packed{i}") for i in range(3)]
    lines: list[str] = []
    outcome = pack.run_pack(
        [c.to_dict() for c in configs + [bad]], folders, 2, Interrupt(), threads=1, log=lines.append
    )
    assert outcome[folders[0]] == outcome[folders[1]] == "finished"
    assert outcome[folders[2]].startswith("failed: FileNotFoundError") and "nonexistent" in outcome[folders[2]]
    assert sum("started" in line for line in lines) == 3
    results = [pack.store.read_result(Path(f)) for f in folders[:2]]
    assert all(_same(r, a) for r, a in zip(results, _alone(configs, tmp_path)))
    stamps = [Path(f, "result.json").stat().st_mtime_ns for f in folders[:2]]
    again = pack.run_pack([c.to_dict() for c in configs], folders[:2], 2, Interrupt(), log=lines.append)
    assert set(again.values()) == {"finished"} and sum("started" in line for line in lines) == 3  # none again
    assert stamps == [Path(f, "result.json").stat().st_mtime_ns for f in folders[:2]]


@pytest.mark.slow
def test_an_interrupted_pack_checkpoints_every_cell_and_resumes_bit_exactly(tmp_path):
    configs = [
        build_config({}, TINY + ["train.epochs=16", "train.checkpoint_every=1", f"train.seed={s}"]) for s in (0, 1)
    ]
    folders = [tmp_path / f"packed{i}" for i in range(2)]
    interrupt = Interrupt()

    def interrupt_once_one_trains() -> None:
        """At the first checkpoint: the other cell, wherever it is (even still starting, with the
        signal held), stops at its next step with a checkpoint; waiting for both let a fast cell
        finish all its epochs first."""
        deadline = time.monotonic() + 120
        while not any((f / "checkpoint.pt").exists() for f in folders) and time.monotonic() < deadline:
            time.sleep(0.01)
        interrupt.request("test")

    threading.Thread(target=interrupt_once_one_trains, daemon=True).start()
    args = ([c.to_dict() for c in configs], [str(f) for f in folders], 2)
    first = pack.run_pack(*args, interrupt, threads=1, log=lambda _: None)
    assert set(first.values()) == {"interrupted"}, first
    assert all((f / "checkpoint.pt").exists() and not (f / "result.json").exists() for f in folders)
    assert set(pack.run_pack(*args, Interrupt(), threads=1, log=lambda _: None).values()) == {"finished"}
    resumed = [pack.store.read_result(f) for f in folders]
    assert all(len(r["resumed_at"]) == 1 for r in resumed)
    assert all(_same(r, a) for r, a in zip(resumed, _alone(configs, tmp_path)))


def test_local_workers_are_numbers_or_one_per_gpu_share_without_a_gpu():
    cfg = build_config({}, TINY)
    assert local.local_workers(3, [cfg]) == 3
    if not torch.cuda.is_available():
        assert local.local_workers("auto", [cfg]) == 1


@pytest.mark.parametrize(
    "slurm, message",
    [
        ("slurm.cells_per_gpu=2,slurm.tasks_per_node=2", "slurm.cells_per_gpu: 2 cells per GPU need tasks_per_node 1"),
        ("slurm.gres=shard:1,slurm.gpus_per_node=1", "slurm.gres: 'shard:1' with gpus_per_node 1"),
    ],
)
def test_slurm_packing_settings_that_contradict_are_errors(slurm, message):
    with pytest.raises(ValueError, match=message):
        load_experiment("pairwise", "embedded", slurm.split(","), check=False)


def test_gres_reaches_sbatch_through_submitit():
    from ablation.slurm.submit import executor_parameters

    exp = load_experiment("pairwise", "embedded", ["slurm.gres=shard:1", "slurm.gpus_per_node=0"], check=False)
    params = executor_parameters(exp.slurm)
    assert params["slurm_gres"] == "shard:1" and "gpus_per_node" not in params
