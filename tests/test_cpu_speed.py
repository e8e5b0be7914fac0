"""benchmarks/cpu_speed.py times the cell's own step on the photos-cpu recipe, and its profile accounts
for the whole step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ablation.training import Training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_speed", ROOT / "benchmarks" / "cpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_times_the_cells_own_step_on_the_preset(bench):
    c = bench.Cell("symmetric", "crop+color", batch=8, steps=1)
    assert isinstance(c.training, Training) and c.step == c.training.step
    assert (c.cfg.model.width, c.cfg.optim.name, c.cfg.train.epochs) == (32, "lars", 40)  # photos-cpu's
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    loss = c.epoch(0)
    assert torch.isfinite(loss) and not all(torch.equal(before[k], v) for k, v in c.model.state_dict().items())


def test_a_child_prints_its_images_per_second(bench, capsys, monkeypatch):
    monkeypatch.setattr(
        "sys.argv",
        [
            "cpu_speed.py",
            "--child",
            "--threads",
            "1",
            "--batch",
            "8",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--part",
            "views",
        ],
    )
    before = torch.get_num_threads()
    try:
        bench.main()
    finally:
        torch.set_num_threads(before)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images_per_s"] > 0


def test_set_changes_the_new_sides_config_and_the_step_runs_it(bench):
    """--set train.precision=bf16 times the cell's step under bf16 autocast (the forward's first
    convolution sees bf16), the baseline without it."""
    plain = bench.Cell("symmetric", "crop+color", batch=8, steps=1)
    bf16 = bench.Cell("symmetric", "crop+color", batch=8, steps=1, overrides=["train.precision=bf16"])
    assert (plain.cfg.train.precision, bf16.cfg.train.precision) == ("auto", "bf16")
    seen = []
    conv = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert torch.isfinite(bf16.epoch(0)) and seen and set(seen) == {torch.bfloat16}
    with pytest.raises(Exception, match="nope"):
        bench.Cell("symmetric", "crop+color", batch=8, steps=1, overrides=["train.precision=nope"])


@pytest.mark.parametrize(
    ("baseline", "sets", "expected"),
    [
        (None, [], {"new": (ROOT, [])}),
        (None, ["train.precision=bf16"], {"new": (ROOT, ["train.precision=bf16"]), "baseline": (ROOT, [])}),
        ("/tmp/pre", [], {"new": (ROOT, []), "baseline": (Path("/tmp/pre"), [])}),
        ("/tmp/pre", ["a=1"], {"new": (ROOT, ["a=1"]), "baseline": (Path("/tmp/pre"), ["a=1"])}),
    ],
)
def test_the_sides_compared(bench, baseline, sets, expected):
    """--set alone: this tree with and without it; with --baseline-tree: both trees with it."""
    import argparse

    assert bench.compared(argparse.Namespace(baseline_tree=baseline, set=sets)) == expected
