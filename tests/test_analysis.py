"""analysis: results directories written by hand (no training) -> tables, figures, report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from ablation import store
from ablation.names import pair_spec
from analysis.paper import compare_with_paper, paper_table, spearman
from analysis.report import pairwise_findings
from analysis.table import markdown_table

OPS = ["crop", "color", "blur"]  # not alphabetical, so ordering bugs show
FACTS = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "simclr-facts.md"
FIXED = {
    "data.name": "embedded",
    "model.encoder": "small_cnn",
    "train.epochs": 2,
    "train.batch_size": 64,
    "augment.mode": "asymmetric",
    "augment.base": "crop",
}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_experiment(root: Path, name: str, cells: list[dict], **fields) -> Path:
    """cells: dicts with label, coords, seed and optional top1 / status / job (None top1 = pending).

    A product grid's swept settings are its axes (fields["swept"]), each cell's values its coords."""
    exp_dir = root / name
    ids = [f"{c['label'].replace('+', '_').replace(',', '_')}-s{c['seed']}" for c in cells]
    settings = {cid: c["coords"] for cid, c in zip(ids, cells)} if fields.get("kind") == "product" else {}
    write_json(
        exp_dir / "experiment.json",
        {
            "name": name,
            "title": f"{name} test",
            "fixed": FIXED,
            "cells": ids,
            "settings": settings,
            "swept": fields.get("axes", []),
            **fields,
        },
    )
    for cid, c in zip(ids, cells):
        meta = {"id": cid, "experiment": name, "label": c["label"], "coords": c["coords"], "seed": c["seed"]}
        write_json(exp_dir / cid / "cell.json", meta)
        if c.get("job"):
            write_json(exp_dir / cid / "job.json", c["job"])
        if c.get("top1") is None and c.get("status", "finished") == "finished":
            continue
        top1 = c.get("top1")
        metrics = (
            None
            if top1 is None
            else {
                "linear_top1": top1,
                "linear_top5": min(1.0, top1 + 0.3),
                "knn_top1": top1 - 0.02,
                "random_init_top1": 0.12,
                "final_loss": 5.0 - top1,
            }
        )
        if c.get("correct"):
            store.write_correct(exp_dir / cid / store.CORRECT, c["correct"])
        write_json(
            exp_dir / cid / "result.json",
            {
                **meta,
                "status": c.get("status", "finished"),
                "reason": c.get("reason"),
                "metrics": metrics,
                "epochs_done": 2,
                "images_seen": c.get("images_seen", 256),
                "resumed_at": [],
                "wall_time_s": 3.0,
                "images_per_s": 1000.0,
                "device": "cpu",
                "versions": {"torch": "2.x"},
                "config": {},
            },
        )
    return exp_dir


def pairwise_cells(value, seeds=(0, 1), skip=(), extra: dict | None = None) -> list[dict]:
    """One cell per (first, second, seed); value(i, j, seed) -> linear top-1 fraction."""
    return [
        {
            "label": pair_spec(a, b),
            "coords": {"first": a, "second": b},
            "seed": s,
            "top1": None if (a, b) in skip else value(i, j, s),
            **(extra or {}).get((a, b), {}),
        }
        for i, a in enumerate(OPS)
        for j, b in enumerate(OPS)
        for s in seeds
    ]


def base_value(i: int, j: int, seed: int) -> float:
    return 0.30 + 0.01 * i + 0.02 * j + 0.01 * seed


def pairwise_exp(tmp_path: Path, name: str, cells: list[dict]) -> Path:
    return write_experiment(tmp_path, name, cells, kind="pairwise", ops=OPS, paper="figure5")


@pytest.fixture
def full_grid(tmp_path: Path) -> Path:
    return pairwise_exp(tmp_path, "pairwise", pairwise_cells(base_value))


def test_summary_reads_back_one_row_per_cell(full_grid: Path) -> None:
    paths = analysis.collect(full_grid)
    assert [p.name for p in paths] == ["summary.csv", "summary_agg.csv"]
    summary = pd.read_csv(full_grid / "summary.csv")
    assert len(summary) == 18
    assert set(summary["label"]) == {pair_spec(a, b) for a in OPS for b in OPS}
    assert summary.loc[(summary["first"] == "crop") & (summary["second"] == "color"), "label"].iloc[0] == "crop+color"
    for col in [
        "id",
        "first",
        "second",
        "seed",
        "status",
        "linear_top1",
        "linear_top5",
        "knn_top1",
        "random_init_top1",
        "final_loss",
        "epochs_done",
        "wall_time_s",
        "images_per_s",
    ]:
        assert col in summary.columns
    assert (summary["status"] == "finished").all()
    assert not any(p.name.endswith(".tmp") for p in full_grid.iterdir())


def test_aggregation_mean_std_n(full_grid: Path) -> None:
    analysis.collect(full_grid)
    agg = pd.read_csv(full_grid / "summary_agg.csv")
    assert len(agg) == 9 and (agg["n"] == 2).all()
    row = agg.set_index("label").loc["color+blur"]
    values = [base_value(1, 2, s) for s in (0, 1)]
    assert row["linear_top1_mean"] == pytest.approx(np.mean(values))
    assert row["linear_top1_std"] == pytest.approx(np.std(values, ddof=1))
    assert row["final_loss_mean"] == pytest.approx(5.0 - np.mean(values))


def test_heatmap_matrix_values_order_and_average(full_grid: Path) -> None:
    summary, _ = analysis.load_summary(full_grid)
    m = analysis.heatmap_matrix(summary, OPS)
    assert list(m.index) == OPS and list(m.columns) == OPS + ["Average"]
    expected = np.array([[100 * (base_value(i, j, 0) + 0.005) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(m[OPS].to_numpy(), expected)
    np.testing.assert_allclose(m["Average"].to_numpy(), expected.mean(axis=1))


def test_missing_and_failed_cells_are_nan_never_zero(tmp_path: Path) -> None:
    extra = {
        ("color", "blur"): {"status": "failed", "top1": 0.0, "reason": "NaN loss"},
        ("blur", "crop"): {"job": {"executor": "local", "pid": 1, "host": "elsewhere", "submitted": 0.0}},
        ("blur", "blur"): {"job": {"executor": "slurm", "job_id": "7"}},
    }
    missing = [("crop", "color"), ("color", "blur"), ("blur", "crop"), ("blur", "blur")]
    cells = pairwise_cells(base_value, skip={("crop", "color"), ("blur", "crop"), ("blur", "blur")}, extra=extra)
    exp_dir = pairwise_exp(tmp_path, "partial", cells)
    summary, agg = analysis.load_summary(exp_dir)
    assert set(summary["status"]) == {"finished", "pending", "failed", "launched"}
    assert (summary["status"] == "launched").sum() == 4  # a local claim and a Slurm job alike, two seeds each
    m = analysis.heatmap_matrix(summary, OPS)
    for first, second in missing:
        assert math.isnan(m.loc[first, second])
        assert agg.set_index("label").loc[pair_spec(first, second), "n"] == 0
    crop_row = [100 * (base_value(0, j, 0) + 0.005) for j in (0, 2)]
    assert m.loc["crop", "Average"] == pytest.approx(np.mean(crop_row))
    assert not (m.fillna(-1) == 0).any().any()
    analysis.collect(exp_dir)
    back = pd.read_csv(exp_dir / "summary.csv")
    assert back["linear_top1"].isna().sum() == 2 * len(missing) and len(back) == 18


def test_unknown_op_in_results_names_the_choices(full_grid: Path) -> None:
    summary, _ = analysis.load_summary(full_grid)
    with pytest.raises(ValueError, match=r"'blur'.*choose from: crop, color"):
        analysis.heatmap_matrix(summary, ["crop", "color"])


def assert_figures(paths: list[Path], stem: str) -> None:
    assert sorted(p.name for p in paths) == [f"{stem}.pdf", f"{stem}.png"]
    for p in paths:
        assert p.stat().st_size > 1000
    png = next(p for p in paths if p.suffix == ".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_figures_written_for_partial_grid(tmp_path: Path) -> None:
    cells = pairwise_cells(
        base_value, skip={("crop", "color")}, extra={("blur", "blur"): {"status": "failed", "top1": None}}
    )
    assert_figures(analysis.plot(pairwise_exp(tmp_path, "partial", cells)), "heatmap")


def finding_verdicts(report_text: str) -> dict[str, str]:
    return dict(
        re.findall(
            r"^- \(([a-d])\) .*?: \*\*(holds|within noise|reversed|cannot be checked)\*\*", report_text, flags=re.M
        )
    )


def test_report_findings_hold_when_crop_color_is_best(tmp_path: Path) -> None:
    boosted = {(0, 1), (1, 0)}  # crop+color, color+crop
    exp_dir = pairwise_exp(
        tmp_path, "pairwise", pairwise_cells(lambda i, j, s: base_value(i, j, s) + 0.2 * ((i, j) in boosted))
    )
    text = analysis.report(exp_dir).read_text()
    assert finding_verdicts(text) == {"a": "holds", "b": "holds", "c": "holds", "d": "holds"}
    assert "![heatmap](figures/heatmap.png)" in text
    assert (exp_dir / "figures" / "heatmap.png").exists() and (exp_dir / "summary.csv").exists()
    assert "| crop+color |" in text and "torch 2.x" in text


def test_report_findings_fail_when_a_single_op_is_best(tmp_path: Path) -> None:
    exp_dir = pairwise_exp(
        tmp_path, "pairwise", pairwise_cells(lambda i, j, s: 0.9 if i == j == 2 else base_value(i, j, s))
    )
    verdicts = finding_verdicts(analysis.report(exp_dir).read_text())
    assert verdicts["a"] == "reversed"  # blur alone is best (no per-image records: the sign decides)
    assert verdicts["b"] == "reversed"  # diagonal mean (30.5, 33.5, 90) beats off-diagonal


def hits(fraction: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """A correctness vector of n test images with exactly round(fraction * n) hits, in random places."""
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[: round(fraction * n)]] = True
    return out


def correct_cells(value, gap_cells: dict, n: int = 4000) -> list[dict]:
    """A pairwise grid whose cells keep per-image records: every cell is right on the same first
    value(i, j) x n images (so two cells differ on exactly the images between their accuracies), except
    `gap_cells`, drawn independently with their own accuracy; the random-init floor is right on 10%."""
    rng = np.random.default_rng(0)
    cells = pairwise_cells(lambda i, j, s: value(i, j))
    for c in cells:
        i, j = OPS.index(c["coords"]["first"]), OPS.index(c["coords"]["second"])
        key = (c["coords"]["first"], c["coords"]["second"])
        linear = hits(gap_cells[key], n, rng) if key in gap_cells else np.arange(n) < round(value(i, j) * n)
        c["top1"] = linear.mean()
        c["correct"] = {"linear": linear, "knn": linear, "random_init": np.arange(n) < n // 10}
    return cells


def test_findings_get_a_paired_interval_and_a_three_way_verdict(tmp_path: Path) -> None:
    """Made-up records of known difference: crop+color 5 points above every other cell holds; the same grid
    with crop+color only 0.1 point above the next cell (on 4,000 images) is within noise."""

    def value(i: int, j: int) -> float:
        return 0.40 if {i, j} == {0, 1} else 0.30 + 0.01 * (i != j)

    clear = pairwise_exp(tmp_path, "clear", correct_cells(value, {}))
    text = analysis.report(clear).read_text()
    assert finding_verdicts(text) == {"a": "holds", "b": "holds", "c": "holds", "d": "holds"}
    assert re.search(r"\(a\) .*95% CI \[\+\d+\.\d, \+\d+\.\d\] \(2 seeds x 4,000 paired test images", text)

    def close(i: int, j: int) -> float:
        return 0.35 if {i, j} == {0, 1} else 0.30 + 0.01 * (i != j) + 0.049 * ((i, j) == (2, 2))

    tied = pairwise_exp(tmp_path, "tied", correct_cells(close, {("crop", "color"): 0.351, ("blur", "blur"): 0.35}))
    verdicts = {f.key: f.verdict for f in pairwise_findings(analysis.load_summary(tied)[0], OPS, tied)}
    assert verdicts["a"] == "within noise"  # crop+color 35.1% vs blur 35.0%: 0.1 point on 4,000 images


def test_findings_that_need_missing_cells_say_so(tmp_path: Path) -> None:
    cells = pairwise_cells(base_value, skip={("crop", "color"), ("color", "crop"), ("crop", "crop")})
    summary, _ = analysis.load_summary(pairwise_exp(tmp_path, "partial", cells))
    verdicts = {f.key: f.verdict for f in pairwise_findings(summary, OPS)}
    # diagonal left: color 33.5, blur 36.5; off-diagonal left average 34.25 -> (b) reversed
    assert verdicts == {"a": "cannot be checked", "b": "reversed", "c": "cannot be checked", "d": "holds"}


def test_findings_find_ops_given_with_parameters(tmp_path: Path) -> None:
    ops = ["crop", "color(s=0.5)", "blur"]
    cells = [
        {
            "label": pair_spec(a, b),
            "coords": {"first": a, "second": b},
            "seed": 0,
            "top1": 0.6 if {a, b} == {"crop", "color(s=0.5)"} else 0.3 + 0.01 * (a != b),
        }
        for a in ops
        for b in ops
    ]
    exp_dir = write_experiment(tmp_path, "cifar", cells, kind="pairwise", ops=ops, paper="figure5")
    findings = pairwise_findings(analysis.load_summary(exp_dir)[0], ops)
    assert [f.verdict for f in findings] == ["holds"] * 4
    assert "crop+color(s=0.5)" in findings[0].detail


TEMPS = (0.1, 0.5, 10.0)


def table5_exp(tmp_path: Path) -> Path:
    cells = [
        {
            "label": f"temperature={t},normalize={str(n).lower()}",
            "coords": {"loss.temperature": t, "loss.normalize": n},
            "seed": s,
            "top1": 0.5 - 0.02 * k + 0.05 * n + 0.01 * s,
        }
        for k, t in enumerate(TEMPS)
        for n in (True, False)
        for s in (0, 1)
    ]
    cells[-1]["status"], cells[-1]["top1"] = "failed", None
    return write_experiment(
        tmp_path, "table5", cells, kind="product", paper="table5", axes=["loss.temperature", "loss.normalize"]
    )


def test_product_summary_columns_and_paper_match(tmp_path: Path) -> None:
    exp_dir = table5_exp(tmp_path)
    analysis.collect(exp_dir)
    summary = pd.read_csv(exp_dir / "summary.csv")
    assert {"loss.temperature", "loss.normalize"} <= set(summary.columns) and len(summary) == 12
    agg = pd.read_csv(exp_dir / "summary_agg.csv").set_index("label")
    assert agg.loc["temperature=10.0,normalize=false", "n"] == 1
    assert math.isnan(agg.loc["temperature=10.0,normalize=false", "linear_top1_std"])
    _, agg = analysis.load_summary(exp_dir)
    side = compare_with_paper(agg, json.loads((exp_dir / "experiment.json").read_text())).set_index("label")
    assert side.loc["temperature=0.1,normalize=true", "paper"] == 64.4
    assert side.loc["temperature=0.5,normalize=true", "paper"] == 60.7
    assert side.loc["temperature=10.0,normalize=false", "paper"] == 57.2
    assert math.isnan(side.loc["temperature=0.1,normalize=false", "paper"])
    assert side.loc["temperature=0.1,normalize=true", "ours"] == pytest.approx(55.5)


def test_product_figures_and_report(tmp_path: Path) -> None:
    exp_dir = table5_exp(tmp_path)
    assert_figures(analysis.plot(exp_dir), "sweep")
    text = analysis.report(exp_dir).read_text()
    assert "Spearman rank correlation, ours vs paper: " in text and "over 3 settings" in text
    assert "Table 5" in text and "![sweep](figures/sweep.png)" in text


def test_generic_product_without_paper_plots(tmp_path: Path) -> None:
    cells = [
        {"label": f"lr={lr},views={v}", "coords": {"optim.lr": lr, "augment.views": v}, "seed": 0, "top1": 0.3 + lr}
        for lr in (0.1, 0.2)
        for v in ("crop", "crop+color")
    ]
    exp_dir = write_experiment(tmp_path, "misc", cells, kind="product", paper=None, axes=["optim.lr", "augment.views"])
    assert_figures(analysis.plot(exp_dir), "sweep")
    assert "No published numbers" in analysis.report(exp_dir).read_text()


def test_table1_from_view_specs_keeps_supervised_as_a_series() -> None:
    agg = pd.DataFrame(
        {
            "label": ["s0.5", "s1+blur"],
            "augment.views": ["crop+color(s=0.5)", "crop+color(s=1.0)+blur"],
            "linear_top1_mean": [0.4, 0.45],
            "linear_top1_std": [0.01, 0.01],
            "n": [2, 2],
        }
    )
    agg = agg.assign(**{"augment.views.color.s": [0.5, 1.0], "augment.views.blur": [False, True]})
    exp = {"paper": "table1", "swept": ["augment.views", "augment.views.color.s", "augment.views.blur"], "fixed": FIXED}
    side = compare_with_paper(agg, exp).set_index("label")
    assert side.loc["s0.5", "paper (SimCLR)"] == 62.6 and side.loc["s0.5", "paper (Supervised)"] == 76.5
    assert side.loc["s1+blur", "paper (SimCLR)"] == 64.5


def test_tableB1_lr_scaling_from_setup_picks_one_series() -> None:
    agg = pd.DataFrame(
        {
            "label": ["a"],
            "train.batch_size": [256],
            "train.epochs": [100],
            "linear_top1_mean": [0.3],
            "linear_top1_std": [math.nan],
            "n": [1],
        }
    )
    exp = {"paper": "tableB1", "swept": ["train.batch_size", "train.epochs"], "fixed": {"optim.lr_scaling": "sqrt"}}
    side = compare_with_paper(agg, exp)
    assert [c for c in side.columns if c.startswith("paper")] == ["paper"]
    assert side["paper"].iloc[0] == 62.8
    both = compare_with_paper(agg, {**exp, "fixed": {}})
    assert both[["paper (linear)", "paper (sqrt)"]].iloc[0].tolist() == [57.5, 62.8]


def test_paper_numbers_only_from_the_facts_file() -> None:
    df = pd.read_csv(Path(analysis.__file__).with_name("paper_numbers.csv"))
    assert set(df["table"]) == {"table1", "table4", "table5", "tableB1"}
    assert set(df["source"]) == {"Table 1", "Table 4", "Table 5", "Table B.1"}
    assert not df["table"].str.contains("figure", case=False).any()
    assert len(df) == 12 + 5 + 6 + 48
    t5 = paper_table("table5")
    assert t5.loc[(t5["temperature"] == 0.1) & t5["normalize"], "value"].item() == 64.4
    assert paper_table("table4").set_index("setting").loc["NT-Xent", "value"] == 63.9
    with pytest.raises(ValueError, match="choose from"):
        paper_table("figure5")
    if FACTS.exists():
        facts = FACTS.read_text()
        missing = [v for v in df["value"] if f"{v:.1f}" not in facts]
        assert not missing


def test_spearman_matches_rank_then_pearson() -> None:
    a = pd.Series([3.0, 1.0, 2.0, 2.0, np.nan, 5.0])
    b = pd.Series([30.0, 12.0, 11.0, 25.0, 7.0, 40.0])
    both = pd.DataFrame({"a": a, "b": b}).dropna()
    expected = np.corrcoef(both["a"].rank(), both["b"].rank())[0, 1]
    rho, n = spearman(a, b)
    assert n == 5 and rho == pytest.approx(expected)
    assert math.isnan(spearman(a[:1], b[:1])[0])


def test_markdown_table_escapes_and_blanks_nan() -> None:
    text = markdown_table(pd.DataFrame({"x": ["a|b", "c"], "y": [1.5, math.nan]}))
    assert text.splitlines() == ["| x | y |", "|---|---|", "| a\\|b | 1.5 |", "| c |  |"]


def test_missing_experiment_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"experiment.json"):
        analysis.collect(tmp_path)


BUDGET_FIGURE = {
    "kind": "budget",
    "x": "train.epochs",
    "hue": "augment.views",
    "facet": "augment.mode",
    "compositions": ["crop+color", "color+crop"],
    "singles": ["crop", "color"],
}


def budget_exp(tmp_path: Path, top1: dict) -> Path:
    """top1[(mode, views)] = [accuracy at 10, 20, 40 epochs]; 1,000 images per epoch."""
    cells = [
        {
            "label": f"epochs={e},mode={m},views={v}",
            "seed": 0,
            "top1": acc[i],
            "images_seen": 1000 * e,
            "coords": {"train.epochs": e, "augment.mode": m, "augment.views": v},
        }
        for (m, v), acc in top1.items()
        for i, e in enumerate((10, 20, 40))
    ]
    return write_experiment(
        tmp_path,
        "budget",
        cells,
        kind="product",
        figure=BUDGET_FIGURE,
        axes=["train.epochs", "augment.mode", "augment.views"],
    )


def test_budget_crossing_is_where_compositions_lead_for_good(tmp_path: Path) -> None:
    from analysis.budget import budget_means, crossing

    top1 = {
        ("asymmetric", "crop"): [0.50, 0.52, 0.53],
        ("asymmetric", "color"): [0.30, 0.31, 0.32],
        ("asymmetric", "crop+color"): [0.48, 0.53, 0.56],
        ("asymmetric", "color+crop"): [0.47, 0.54, 0.57],
        # symmetric: compositions lead at 10 epochs, lose it at 20: no crossing
        ("symmetric", "crop"): [0.40, 0.55, 0.60],
        ("symmetric", "color"): [0.30, 0.30, 0.30],
        ("symmetric", "crop+color"): [0.45, 0.50, 0.59],
        ("symmetric", "color+crop"): [0.46, 0.51, 0.58],
    }
    exp_dir = budget_exp(tmp_path, top1)
    summary, _ = analysis.table.load_summary(exp_dir)
    means = budget_means(summary, BUDGET_FIGURE)
    assert crossing(means[means["augment.mode"] == "asymmetric"], BUDGET_FIGURE) == 20_000
    assert crossing(means[means["augment.mode"] == "symmetric"], BUDGET_FIGURE) is None
    paths = analysis.plot(exp_dir)
    assert sorted(p.name for p in paths) == ["budget.csv", "budget.pdf", "budget.png"]
    table = pd.read_csv(exp_dir / "figures" / "budget.csv")
    assert len(table) == 24 and set(table["images_seen"]) == {10_000, 20_000, 40_000}
    assert table["random_init"].eq(12.0).all()
