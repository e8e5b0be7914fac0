"""Sizing before submission: the memory estimate against measured peaks, the refusal of a cell that cannot
fit (before any sbatch), the allocation a dry-run shows, and the rank mapping of a multi-node job."""

from __future__ import annotations

import os
import re

import pytest

from ablation import cost, pack, sizing
from ablation.cli import main
from ablation.config import build_config
from ablation.grid import load_experiment
from ablation.slurm import jobs

TOLERANCE = 0.25  # the estimate is within 25% of the measured peak of a CPU training step


def estimate_on_cpu(cfg) -> float:
    """The estimate of the step alone (the measurement holds no training set)."""
    return sizing.footprint(cfg).bytes(cfg.train.batch_size) - cost.resident_bytes(cfg.data)


@pytest.mark.slow  # measures in a child process
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.encoder=small_cnn", "model.width=32", "data.size=48", "train.batch_size=256"],
        ["model.encoder=resnet18", "data.size=24", "train.batch_size=24"],
    ],
)
def test_the_estimate_is_within_tolerance_of_a_measured_cpu_step(overrides):
    """Other sizes and batches than the calibration's (sizing.CALIBRATION)."""
    cfg = build_config({}, [*overrides, "train.precision=fp32", "train.device=cpu", "train.compile=never"])
    measured, estimated = sizing.measure_peak_bytes(cfg), estimate_on_cpu(cfg)
    print(f"estimated {estimated / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB")
    assert abs(estimated / measured - 1) <= TOLERANCE, (estimated / 1e6, measured / 1e6)


@pytest.mark.slow
def test_the_resnet50_estimate_is_within_tolerance_of_a_measured_cpu_step():
    cfg = build_config(
        {},
        [
            "model.encoder=resnet50",
            "model.cifar_stem=false",
            "model.head_hidden=null",
            "model.head_out_bn=true",
            "data.size=96",
            "train.batch_size=6",
            "train.precision=fp32",
            "train.device=cpu",
            "train.compile=never",
        ],
    )
    measured, estimated = sizing.measure_peak_bytes(cfg), estimate_on_cpu(cfg)
    print(f"estimated {estimated / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB")
    assert abs(estimated / measured - 1) <= TOLERANCE, (estimated / 1e6, measured / 1e6)


def test_memory_grows_with_the_batch_per_rank_and_bf16_halves_the_activations():
    cfg = build_config({}, ["model.encoder=resnet18", "data.size=32", "train.precision=fp32"])
    fp32, bf16 = (
        sizing.footprint(cfg),
        sizing.footprint(build_config({}, ["model.encoder=resnet18", "data.size=32", "train.precision=bf16"])),
    )
    assert fp32.per_image > 0 and fp32.bytes(64) > fp32.bytes(32)
    assert 0.5 < bf16.per_image / fp32.per_image < 0.6  # the views stay fp32


def test_imagenet_dry_run_shows_memory_per_rank_and_the_allocation(tmp_path, capsys):
    assert main(["grid", "temperature", "--preset", "imagenet", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("label"))
    assert header.split()[-1] == "GB/rank"
    rows = [line.split() for line in out.splitlines() if line.startswith("normalize=")]
    assert len(rows) == 6 and all(5 < float(r[-1]) < 80 for r in rows), out
    assert (
        "allocation: nodes 4 x tasks_per_node 8 = 32 ranks, gpus_per_node 8, 80 GB each; "
        "batch 4096 = 128 per rank; every cell fits"
    ) in out


def test_a_launch_that_cannot_fit_refuses_in_one_line_before_any_submission(tmp_path, capsys):
    """--executor slurm: the check comes before sbatch is looked for, so this holds without a cluster too."""
    argv = [
        "grid",
        "temperature",
        "--preset",
        "imagenet",
        "--executor",
        "slurm",
        "--results",
        str(tmp_path),
        "--set",
        "slurm.nodes=1",
        "--set",
        "slurm.tasks_per_node=1",
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("ablate grid: error: batch 4096 at 224 px needs about ")
    assert (
        "GB per rank with 1 rank (slurm.gpu_mem_gb: 80): use nodes: 1, tasks_per_node: 8 (512 per rank), "
        "or batch 512" in line
    ), line
    assert captured.out == "" and not any(tmp_path.iterdir())  # nothing prepared, nothing submitted


def test_the_suggested_allocation_fits_and_the_refused_one_does_not():
    exp = load_experiment("temperature", "imagenet", ["slurm.nodes=1", "slurm.tasks_per_node=1", "slurm.gpu_mem_gb=40"])
    fp = sizing.footprint(exp.cells[0].config)
    assert not sizing.fits(fp, 4096, 40)
    why = sizing.refusal(exp)
    assert why is not None and "use nodes: 1, tasks_per_node: 8 (512 per rank)" not in why  # 40 GB: fewer per rank
    per_rank = int(re.search(r"tasks_per_node: \d+ \((\d+) per rank\)", why).group(1))  # type: ignore[union-attr]
    assert sizing.fits(fp, per_rank, 40) and not sizing.fits(fp, 2 * per_rank, 40)


def test_a_batch_that_does_not_divide_over_the_ranks_is_refused():
    exp = load_experiment("temperature", "imagenet", ["train.batch_size=1000"])
    assert sizing.refusal(exp) == (
        "cell normalize=true,temperature=0.05: batch 1000 does not divide over 32 ranks "
        "(slurm.nodes 4 x tasks_per_node 8); choose a batch that is a multiple of 32, "
        "or other ranks"
    )


def test_packs_stay_on_one_node():
    with pytest.raises(ValueError, match=r"slurm.cells_per_gpu: 2 cells per GPU need nodes 1 \(got 2\)"):
        load_experiment("temperature", "embedded", ["slurm.nodes=2", "slurm.cells_per_gpu=2"])
    exp = load_experiment("temperature", "embedded", ["slurm.nodes=2"])
    assert [len(g) for g in pack.packs(exp.cells, 0, 1, 2)] == [1] * len(exp.cells)  # a DDP cell: one a job


# What Slurm sets in each task of a job of 2 nodes x 4 tasks (SLURM_PROCID counts across nodes), and the
# variable submitit's sbatch script exports.
JOB = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_NTASKS_PER_NODE": "4",
}
EXPORTED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.mark.parametrize("node, local", [(0, 0), (0, 3), (1, 0), (1, 2)])
def test_a_two_node_job_maps_each_task_to_its_rank_and_the_first_node(monkeypatch, node, local):
    for key in EXPORTED:
        monkeypatch.delenv(key, raising=False)  # restored after the test: rendezvous writes them
    for key, value in {
        **JOB,
        "SLURM_NODEID": str(node),
        "SLURM_LOCALID": str(local),
        "SLURM_PROCID": str(4 * node + local),
    }.items():
        monkeypatch.setenv(key, value)
    jobs.rendezvous()
    assert {k: os.environ[k] for k in EXPORTED if k != "MASTER_PORT"} == {
        "MASTER_ADDR": "gpu07",
        "RANK": str(4 * node + local),
        "WORLD_SIZE": "8",
        "LOCAL_RANK": str(local),
        "LOCAL_WORLD_SIZE": "4",
    }
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # from the job id: the same in every task
