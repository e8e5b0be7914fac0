"""Methods in grids: recipes per preset, pairwise facets, the shipped Table 1 / Table 4 / method_sensitivity
experiments, and their analysis (paper rows beside ours, accuracy drops, one heatmap per method)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.collections import QuadMesh
from test_analysis import OPS, assert_figures, base_value, write_experiment
from test_grid import NEEDS, PRESETS, write

import analysis
from ablation.grid import EXPERIMENTS_DIR, load_experiment
from ablation.methods import REGISTRY
from ablation.names import pair_spec
from analysis.figures import plot_heatmap
from analysis.paper import compare_with_paper, paper_table
from analysis.sensitivity import drop_table

# ---- recipes and facets in the grid ---------------------------------------------------------


def test_method_recipes_name_registered_methods_and_known_presets():
    recipes = yaml.safe_load((EXPERIMENTS_DIR / "methods.yaml").read_text())
    presets = yaml.safe_load((EXPERIMENTS_DIR / "presets.yaml").read_text())
    assert set(recipes) <= set(REGISTRY) and {"supervised", "byol", "simsiam", "barlow_twins"} <= set(recipes)
    for method, per_preset in recipes.items():
        assert set(per_preset) <= set(presets), method
        assert set(PRESETS) <= set(per_preset), method  # a default recipe on every preset


def test_recipe_applies_to_its_method_below_the_experiment_and_set(tmp_path):
    (tmp_path / "presets.yaml").write_text(yaml.safe_dump({"tiny": {"optim": {"lr": 0.5}, "train": {"epochs": 1}}}))
    (tmp_path / "methods.yaml").write_text(
        yaml.safe_dump(
            {"byol": {"tiny": {"optim": {"lr": 0.2, "weight_decay": 0.01}, "method_args": {"momentum": 0.9}}}}
        )
    )
    spec = {
        "preset": "tiny",
        "cell": {"optim": {"weight_decay": 0.001}},
        "grid": {"kind": "product", "axes": {"method": ["simclr", "byol"]}},
    }
    simclr, byol = load_experiment(str(write(tmp_path, spec))).cells
    assert (simclr.config.optim.lr, simclr.config.method_args) == (0.5, None)
    assert byol.config.optim.lr == 0.2 and byol.config.method_args == {"momentum": 0.9}
    assert byol.config.optim.weight_decay == 0.001  # the experiment's cell beats the recipe
    _, byol = load_experiment(str(write(tmp_path, spec)), overrides=["optim.lr=0.3"]).cells
    assert byol.config.optim.lr == 0.3  # --set beats everything


def test_pairwise_grid_with_a_method_facet(tmp_path):
    spec = {"grid": {"kind": "pairwise", "ops": ["crop", "color"], "axes": {"method": ["simclr", "byol"]}}}
    exp = load_experiment(str(write(tmp_path, spec)))
    assert exp.axes == ["method"] and len(exp.cells) == 8
    assert [c.label for c in exp.cells[:2]] == ["crop,method=simclr", "crop+color,method=simclr"]
    cell = exp.cells[5]
    assert cell.coords == {"first": "crop", "second": "color", "method": "byol"}
    assert cell.config.method == "byol" and cell.config.augment.views == "crop+color"


# ---- the shipped experiments ----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_table1_has_supervised_cells_and_an_autoaugment_column(preset):
    exp = load_experiment("color_strength", preset, NEEDS.get(preset, []))
    methods = {c.config.method for c in exp.cells}
    assert methods == {"simclr", "supervised"}
    assert {(c.config.method, c.config.augment.views) for c in exp.cells} >= {
        ("simclr", "crop+autoaugment"),
        ("supervised", "crop+autoaugment"),
    }


@pytest.mark.parametrize("preset", PRESETS)
def test_table4_has_the_papers_five_rows(preset):
    exp = load_experiment("loss", preset, NEEDS.get(preset, []))
    rows = {(c.config.loss.name, c.config.loss.semi_hard) for c in exp.cells}
    assert rows == {
        ("margin", False),
        ("nt_logistic", False),
        ("margin", True),
        ("nt_logistic", True),
        ("nt_xent", False),
    }


def test_method_sensitivity_crosses_methods_with_augmentations_full_first():
    exp = load_experiment("method_sensitivity")
    assert exp.axes == ["method", "augment.views"]
    assert {c.config.method for c in exp.cells} >= {"simclr", "supervised", "byol", "simsiam"}
    views = list(dict.fromkeys(c.config.augment.views for c in exp.cells))
    assert views[0] == "crop+color" and {"crop", "color"} <= set(views)


# ---- analysis -------------------------------------------------------------------------------


def agg_of(name: str, keep: Callable[[dict], bool] = lambda settings: True) -> tuple[pd.DataFrame, dict]:
    """(one aggregated row per kept cell of a shipped experiment, with its swept settings as experiment.json
    gives them, top-1 0.3; the experiment.json)."""
    grid = load_experiment(name)
    exp = grid.describe()
    rows = [
        {"label": c.label, **exp["settings"][c.id], "linear_top1_mean": 0.3, "linear_top1_std": math.nan, "n": 1}
        for c in grid.cells
        if keep(exp["settings"][c.id])
    ]
    return pd.DataFrame(rows), exp


def test_table1_rows_per_method_with_autoaugment_and_every_paper_row():
    agg, exp = agg_of("color_strength", lambda s: s["augment.views"] in ("crop+color(s=0.5)", "crop+autoaugment"))
    assert {"method", "augment.views.color.s", "augment.views.autoaugment"} <= set(exp["swept"])
    side = compare_with_paper(agg, exp)
    ours = side[side["label"] != ""].set_index("label")
    assert len(ours) == 4 and [c for c in side.columns if c.startswith("paper")] == ["paper"]
    assert ours.loc["method=simclr,views=crop+color(s=0.5)", "paper"] == 62.6
    assert ours.loc["method=simclr,views=crop+autoaugment", "paper"] == 61.1
    assert ours.loc["method=supervised,views=crop+color(s=0.5)", "paper"] == 76.5
    assert ours.loc["method=supervised,views=crop+autoaugment", ["setting", "method", "paper"]].tolist() == [
        "AutoAugment",
        "Supervised",
        77.1,
    ]
    rest = side[side["label"] == ""]
    assert len(rest) == len(paper_table("table1")) - 4 and rest["ours"].isna().all()
    assert set(side["paper"]) == set(paper_table("table1")["value"])  # every paper row is shown


def test_table1_without_a_method_axis_picks_the_simclr_rows():
    agg, exp = agg_of("color_strength", lambda s: s["method"] == "simclr")
    exp = {**exp, "swept": [k for k in exp["swept"] if k != "method"], "fixed": {**exp["fixed"], "method": "simclr"}}
    side = compare_with_paper(agg.drop(columns="method"), exp)
    assert [c for c in side.columns if c.startswith("paper")] == ["paper"] and (side["label"] != "").all()
    assert side["paper"].tolist() == [59.6, 61.0, 62.6, 63.2, 64.5, 61.1]


def test_table4_matches_all_five_rows():
    agg, exp = agg_of("loss")
    side = compare_with_paper(agg, exp)
    # one row per loss: each at its best of the three hyper-parameter cells (the grid lists NT-Xent first)
    assert sorted(side["paper"]) == [50.9, 51.6, 57.5, 57.9, 63.9] and (side["label"] != "").all()


def sensitivity_exp(tmp_path: Path) -> Path:
    methods, views = ["simclr", "byol"], ["crop+color", "crop", "color"]
    value = {
        ("simclr", "crop+color"): 0.5,
        ("simclr", "crop"): 0.3,
        ("simclr", "color"): 0.35,
        ("byol", "crop+color"): 0.45,
        ("byol", "crop"): 0.4,
        ("byol", "color"): 0.3,
    }
    cells = [
        {
            "label": f"method={m},views={v}",
            "coords": {"method": m, "augment.views": v},
            "seed": s,
            "top1": value[m, v] + 0.01 * s * (v == "crop"),
        }
        for s in (0, 1)
        for m in methods
        for v in views
    ]
    return write_experiment(tmp_path, "sens", cells, kind="product", paper=None, axes=["method", "augment.views"])


def test_drop_is_paired_by_seed_against_the_first_views_value(tmp_path):
    exp_dir = sensitivity_exp(tmp_path)
    summary, _ = analysis.load_summary(exp_dir)
    drops = drop_table(summary, analysis.table.load_experiment(exp_dir))
    got = drops.set_index(["method", "augment.views", "seed"])["drop"]
    assert got["simclr", "crop", 0] == pytest.approx(20.0) and got["simclr", "crop", 1] == pytest.approx(19.0)
    assert got["byol", "crop", 0] == pytest.approx(5.0) and got["byol", "color", 1] == pytest.approx(15.0)
    assert "crop+color" not in set(drops["augment.views"])
    paths = analysis.plot(exp_dir)
    assert_figures([p for p in paths if p.stem == "drop"], "drop")
    text = analysis.report(exp_dir).read_text()
    assert "## Sensitivity to augmentations, per method" in text
    assert "| simclr | +19.5 ± 0.7 | +15.0 ± 0.0 |" in text


def test_pairwise_heatmap_one_panel_per_method_on_one_colour_scale(tmp_path):
    cells = [
        {
            "label": f"{pair_spec(a, b)},method={m}",
            "coords": {"first": a, "second": b, "method": m},
            "seed": 0,
            "top1": base_value(i, j, 0) + (0.3 if m == "byol" else 0.0),
        }
        for m in ("simclr", "byol")
        for i, a in enumerate(OPS)
        for j, b in enumerate(OPS)
    ]
    exp_dir = write_experiment(tmp_path, "facets", cells, kind="pairwise", ops=OPS, paper="figure5", axes=["method"])
    summary, _ = analysis.load_summary(exp_dir)
    fig = plot_heatmap(summary, analysis.table.load_experiment(exp_dir))
    meshes = [c for ax in fig.axes[:2] for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2 and meshes[0].get_clim() == meshes[1].get_clim()
    assert len(fig.axes) == 3  # two heatmaps, one colour bar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["method=simclr", "method=byol"]
    assert_figures(analysis.plot(exp_dir), "heatmap")
    text = analysis.report(exp_dir).read_text()
    assert "method=simclr:" in text and "method=byol:" in text
