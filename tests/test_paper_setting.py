"""The shipped presets and experiments say what the paper did: read off the resolved cell configs (and the
models and optimisers they build), one test per departure that was found and fixed."""

from __future__ import annotations

import math

import pytest
import torch

from ablation.augment import parse_spec
from ablation.cell import sgd_epochs
from ablation.config import build_config
from ablation.data.serve import EVAL_CENTRE, eval_centre
from ablation.grid import load_experiment
from ablation.optim import scaled_lr
from ablation.training import build_optimisation, initial_method
from analysis.paper import compare_with_paper

GPU_PRESETS = ("cifar10", "imagenet", "imagenet100")
SYMMETRIC_EXPERIMENTS = ("temperature", "head", "loss", "batch_epochs")


def cells(name: str, preset: str) -> list:
    return load_experiment(name, preset).cells


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_score_with_the_papers_linear_evaluation(preset):
    cfg = cells("temperature", preset)[0].config
    assert cfg.eval.linear == "sgd" and sgd_epochs(cfg) == (100 if preset == "cifar10" else 90)


@pytest.mark.parametrize("preset", ["imagenet", "imagenet100"])
@pytest.mark.parametrize("name", SYMMETRIC_EXPERIMENTS)
def test_imagenet_views_have_the_papers_blur(name, preset):
    """The paper's default augmentation (Tables 4, 5, B.1, Figure 8) is crop + colour + blur on ImageNet."""
    for cell in cells(name, preset):
        assert [op.name for op in parse_spec(cell.config.augment.views).ops] == ["crop", "color", "blur"]


@pytest.mark.parametrize("preset", ["embedded", "cifar10", "imagenet"])
def test_table_b1_runs_both_lr_scalings_at_the_papers_base_rates(preset):
    grid = [c.config for c in cells("batch_epochs", preset)]
    for scaling, base in (("linear", lambda b: 0.3 * b / 256), ("sqrt", lambda b: 0.075 * math.sqrt(b))):
        ours = [c for c in grid if c.optim.lr_scaling == scaling]
        assert {(c.train.batch_size, c.train.epochs) for c in ours} == {
            (c.train.batch_size, c.train.epochs) for c in grid
        }  # every (batch, epochs) in both columns
        for c in ours:
            assert scaled_lr(c.optim.lr, c.train.batch_size, scaling) == pytest.approx(base(c.train.batch_size))


@pytest.mark.parametrize("preset", ["embedded", "imagenet"])
def test_table4_tunes_each_loss_on_its_own_hyperparameter(preset):
    rows: dict[tuple, set] = {}
    for c in (cell.config for cell in cells("loss", preset)):
        knob = c.loss.margin if c.loss.name == "margin" else c.loss.temperature
        rows.setdefault((c.loss.name, c.loss.semi_hard), set()).add(knob)
    assert set(rows) == {
        ("nt_xent", False),
        ("nt_logistic", False),
        ("nt_logistic", True),
        ("margin", False),
        ("margin", True),
    }
    assert all(len(values) == 3 for values in rows.values())


def test_table4_report_takes_each_rows_best():
    agg = __import__("pandas").DataFrame(
        [
            {
                "label": f"loss={name},t={t}",
                "loss.name": name,
                "loss.semi_hard": False,
                "loss.temperature": t,
                "linear_top1_mean": acc,
                "linear_top1_std": float("nan"),
                "n": 1,
            }
            for name, t, acc in (
                ("nt_xent", 0.1, 0.50),
                ("nt_xent", 0.5, 0.55),
                ("nt_xent", 1.0, 0.40),
                ("nt_logistic", 0.5, 0.30),
            )
        ]
    )
    exp = {"paper": "table4", "swept": ["loss.name", "loss.semi_hard", "loss.temperature"], "fixed": {}}
    side = compare_with_paper(agg, exp)
    ours = side[side["label"] != ""].set_index("setting")["ours"]
    assert ours.to_dict() == pytest.approx({"NT-Xent": 55.0, "NT-Logistic": 30.0})


def test_barlow_twins_biases_learn_at_its_authors_rate():
    """Barlow Twins' LARS: weights 0.2 x B/256, biases and batch-norm parameters 0.0048 x B/256."""
    for method, ratio in (("barlow_twins", 0.0048 / 0.2), ("simclr", 1.0), ("byol", 1.0)):
        cfg = build_config({}, [f"method={method}", "model.width=4"])
        optimizer, _ = build_optimisation(cfg, initial_method(cfg, torch.device("cpu"), 10), steps=10)
        weights, biases = optimizer.param_groups
        assert biases["initial_lr"] == pytest.approx(weights["initial_lr"] * ratio)


@pytest.mark.parametrize("preset", ["embedded", "imagenet"])
def test_figure8_sweeps_32_to_2048_and_runs_no_head_once(preset):
    grid = [(c.config.model.head, c.config.model.out_dim) for c in cells("head", preset)]
    assert len(grid) == len(set(grid)) and [h for h, _ in grid].count("none") == 1
    for head in ("linear", "nonlinear"):
        assert sorted(d for h, d in grid if h == head) == [32, 64, 128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("preset, width", [("cifar10", 512), ("imagenet", 2048)])
def test_gpu_presets_build_the_reference_codes_projection_head(preset, width):
    """Hidden width = the width of h, batch norm after every linear layer, the output's without a shift."""
    cfg = cells("temperature", preset)[0].config
    model = initial_method(cfg, torch.device("cpu"), 10)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model.head if isinstance(m, torch.nn.BatchNorm1d)]
    assert model.dim == width and [(m.in_features, m.out_features) for m in linears] == [(width, width), (width, 128)]
    assert len(norms) == 2 and isinstance(model.head[-1], torch.nn.BatchNorm1d)
    assert all(m.bias is None for m in linears) and not model.head[-1].bias.requires_grad


def test_streamed_evaluation_images_keep_the_usual_centre():
    """A streamed ImageNet image is evaluated at 224 of 256 (0.875 of its shorter side), or at the share
    a stored side gives, as the resident path does."""
    assert eval_centre(224, None) == EVAL_CENTRE == 0.875
    assert eval_centre(224, 256) == 0.875 and eval_centre(32, 40) == 0.8
