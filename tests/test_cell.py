"""One cell: trains, evaluates, resumes bit-exactly, records failures, never re-runs a finished cell."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ablation import store
from ablation.cell import Preempted, run_cell
from ablation.cli import main
from ablation.config import build_config

pytestmark = pytest.mark.slow  # every test here trains a cell

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "data.size=16",
    "model.width=8",
    "model.head_hidden=32",
    "model.out_dim=16",
    "train.epochs=3",
    "train.batch_size=64",
    "train.checkpoint_every=1",
    "eval.knn_k=20",
    "augment.views=crop+color",
]


class StopAfter:
    """An interrupt that fires after `steps` training steps (what a signal handler would set)."""

    reason = "test interrupt"

    def __init__(self, steps: int):
        self.left = steps

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left <= 0


def tiny(*extra: str):
    return build_config({}, TINY + list(extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return run_cell(tiny(), out, show_progress=False), out


def test_result_has_the_contract_keys(uninterrupted):
    result, out = uninterrupted
    assert result["status"] == "finished" and result["epochs_done"] == 3
    cfg = tiny()
    steps = cfg.data.n_train // cfg.train.batch_size  # the last partial batch is dropped
    assert result["images_seen"] == 3 * steps * cfg.train.batch_size
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["metrics"] == result["metrics"]
    for key in ("linear_top1", "linear_top5", "knn_top1", "random_init_top1"):
        assert 0.0 <= on_disk["metrics"][key] <= 1.0
    assert on_disk["metrics"]["linear_top5"] >= on_disk["metrics"]["linear_top1"]
    for key in ("wall_time_s", "images_per_s", "device", "seed", "versions", "config", "resumed_at"):
        assert key in on_disk
    assert on_disk["config"]["train"]["epochs"] == 3 and (out / "config.yaml").exists()


@pytest.mark.parametrize("stop_at", [2, 4, 9])  # mid-epoch, at an epoch boundary, in the last epoch
def test_interrupted_then_resumed_equals_uninterrupted(uninterrupted, tmp_path, stop_at):
    full, _ = uninterrupted
    with pytest.raises(Preempted):
        run_cell(tiny(), tmp_path, interrupt=StopAfter(stop_at), show_progress=False)
    assert not (tmp_path / "result.json").exists() and (tmp_path / "checkpoint.pt").exists()
    resumed = run_cell(tiny(), tmp_path, show_progress=False)
    assert resumed["metrics"] == full["metrics"]  # bit-exact on CPU
    assert resumed["losses"] == full["losses"]
    (where,) = resumed["resumed_at"]
    assert where["epoch"] * (256 // 64) + where["step"] == stop_at


def test_finished_cell_is_not_rerun(uninterrupted):
    _result, out = uninterrupted
    stamp = (out / "result.json").stat().st_mtime_ns
    again = run_cell(tiny(), out, interrupt=StopAfter(0), show_progress=False)
    assert again == json.loads((out / "result.json").read_text())
    assert (out / "result.json").stat().st_mtime_ns == stamp


def test_checkpoint_loads_with_weights_only(uninterrupted):
    _, out = uninterrupted
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["state"]["epoch"] == 3


def test_non_finite_loss_fails_the_cell_with_a_reason(tmp_path):
    cfg = tiny(
        "optim.name=sgd",
        "optim.lr=1000",
        "optim.lr_scaling=linear",
        "loss.normalize=false",
        "loss.temperature=0.0001",
        "train.epochs=2",
    )
    result = run_cell(cfg, tmp_path, show_progress=False)
    assert result["status"] == "failed" and "non-finite loss" in result["reason"]

    def strict(constant: str) -> None:
        raise AssertionError(f"result.json holds {constant}: not strict JSON")

    written = json.loads((tmp_path / "result.json").read_text(), parse_constant=strict)
    assert written["status"] == "failed" and written["metrics"]["final_loss"] is None


def test_ablate_run_cli_prints_metrics(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path)] + [a for kv in TINY for a in ("--set", kv)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "linear_top1=" in out and "random_init_top1=" in out
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "finished"


def test_an_unreadable_checkpoint_makes_the_cell_corrupt_naming_the_file(tmp_path):
    with pytest.raises(Preempted):
        run_cell(tiny(), tmp_path, interrupt=StopAfter(2), show_progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(store.Corrupt, match=rf"^{ckpt}: cannot be loaded"):
        run_cell(tiny(), tmp_path, show_progress=False)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "corrupt" and result["files"] == ["checkpoint.pt"]
    assert result["reason"].startswith(f"{ckpt}: cannot be loaded")


def test_a_second_run_of_a_cell_waits_for_the_first_to_end(tmp_path):
    """One writer per cell: a run started while another holds the cell (a cancelled Slurm task
    still saving, say) writes nothing until that one has ended."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from ablation import store\n"
                f"with store.locked(store.Path({str(tmp_path)!r}) / store.CELL_LOCK):\n"
                "    print('holding', flush=True); time.sleep(3); print(time.time(), flush=True)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    run_cell(tiny("train.epochs=1"), tmp_path, show_progress=False)
    released = float(holder.stdout.readline())
    holder.wait(timeout=60)
    # file times come from the kernel's coarse clock (a few ms behind time.time()); a run that did
    # not wait would have written its config about 3 s before the release
    assert (tmp_path / "config.yaml").stat().st_mtime >= released - 0.5


@pytest.mark.parametrize("protocol", ["sgd", "online"])
def test_ablate_run_scores_with_each_protocol_and_names_it(tmp_path, capsys, protocol):
    extra = [f"eval.linear={protocol}", "eval.sgd_epochs=2", "eval.sgd_batch=64", "train.epochs=1"]
    args = ["run", "--out", str(tmp_path)] + [a for kv in TINY + extra for a in ("--set", kv)]
    assert main(args) == 0 and "linear_top1=" in capsys.readouterr().out
    result = json.loads((tmp_path / store.RESULT).read_text())
    assert result["status"] == "finished" and result["eval"]["linear_protocol"] == protocol
    assert result["eval"]["random_init_protocol"] == ("lbfgs" if protocol == "online" else protocol)
    correct = store.read_correct(tmp_path / store.CORRECT)
    assert set(correct) == {"linear", "knn", "random_init"} and len(correct["linear"]) == 128
    for probe, metric in (("linear", "linear_top1"), ("knn", "knn_top1"), ("random_init", "random_init_top1")):
        assert correct[probe].mean() == pytest.approx(result["metrics"][metric])


def test_compared_protocols_leave_pretraining_and_the_lbfgs_probe_unchanged(uninterrupted, tmp_path):
    """eval.compare trains the online head alongside and runs the sgd probe after, yet the encoder is the
    same: its lbfgs score equals the plain cell's linear_top1, bit for bit, and so do its losses; an
    interruption mid-run resumes the online head exactly."""
    full, _ = uninterrupted
    cfg = tiny("eval.compare=true", "eval.sgd_epochs=2", "eval.sgd_batch=64")
    with pytest.raises(Preempted):
        run_cell(cfg, tmp_path / "cut", interrupt=StopAfter(5), show_progress=False)
    resumed = run_cell(cfg, tmp_path / "cut", show_progress=False)
    whole = run_cell(cfg, tmp_path / "whole", show_progress=False)
    m = whole["metrics"]
    assert m["linear_top1_lbfgs"] == m["linear_top1"] == full["metrics"]["linear_top1"]
    assert whole["losses"] == full["losses"] and {"linear_top1_sgd", "linear_top1_online"} <= set(m)
    assert resumed["metrics"] == m
