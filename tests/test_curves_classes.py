"""Training curves and per-class figures from results folders written by hand (no training):
grouped as experiment.json says, numbers equal to a naive computation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import analysis
from ablation.names import PER_CLASS, pair_spec
from ablation.store import write_metrics
from analysis.classes import TOP1, class_change
from analysis.curves import groups, load_curves, plot_curves

OPS = ["crop", "color", "blur"]  # not alphabetical, so ordering bugs show
CLASSES = ["disk", "ring", "star"]
FIXED = {
    "data.name": "embedded",
    "model.encoder": "small_cnn",
    "train.epochs": 3,
    "train.batch_size": 64,
    "augment.mode": "asymmetric",
}


def accuracy(i: int, seed: int, c: int) -> float:
    return round(0.2 + 0.1 * i + 0.05 * c * (i % 2) + 0.01 * seed, 4)


def write(root: Path, cells: list[dict], **exp) -> Path:
    """cells: label, coords, seed, index i (values derive from it), optional status."""
    ids = [f"c{n}" for n in range(len(cells))]
    (root / "experiment.json").parent.mkdir(parents=True, exist_ok=True)
    settings = {cid: c["coords"] for cid, c in zip(ids, cells)} if exp.get("kind") == "product" else {}
    (root / "experiment.json").write_text(
        json.dumps(
            {
                "name": "t",
                "title": "t",
                "fixed": FIXED,
                "cells": ids,
                "settings": settings,
                "swept": exp.get("axes", []),
                **exp,
            }
        )
    )
    for cid, c in zip(ids, cells):
        d = root / cid
        d.mkdir()
        meta = {"id": cid, "label": c["label"], "coords": c["coords"], "seed": c["seed"]}
        (d / "cell.json").write_text(json.dumps(meta))
        per_class = {name: accuracy(c["i"], c["seed"], k) for k, name in enumerate(CLASSES)}
        finished = c.get("status", "finished") == "finished"
        metrics = (
            {
                "linear_top1": sum(per_class.values()) / 3,
                "linear_top5": 1.0,
                "knn_top1": 0.1,
                "random_init_top1": 0.1,
                "final_loss": 1.0,
                PER_CLASS: per_class,
            }
            if finished
            else None
        )
        (d / "result.json").write_text(
            json.dumps(
                {
                    **meta,
                    "status": c.get("status", "finished"),
                    "metrics": metrics,
                    "wall_time_s": 3.0,
                    "images_per_s": 1.0,
                    "epochs_done": 3,
                }
            )
        )
        write_metrics(
            d,
            [
                {
                    "epoch": e,
                    "wall_s": 2.0 * e,
                    "loss": 5.0 - 0.1 * e * (1 + c["i"]),
                    "pos_sim": 0.5,
                    "uniform": -2.0,
                    **({"knn_top1": 0.1 * e} if e == 2 else {}),
                }
                for e in (1, 2, 3)
            ],
        )
    return root


def pairwise(tmp_path: Path, failed: tuple = ()) -> Path:
    cells = [
        {
            "label": a if a == b else f"{a}+{b}",
            "coords": {"first": a, "second": b},
            "seed": s,
            "i": 3 * i + j,
            **({"status": "failed"} if (a, b) in failed else {}),
        }
        for i, a in enumerate(OPS)
        for j, b in enumerate(OPS)
        for s in (0, 1)
    ]
    return write(tmp_path / "pairwise", cells, kind="pairwise", ops=OPS, paper="figure5")


def test_per_class_change_is_each_class_minus_the_reference_mean_over_seeds(tmp_path):
    summary, agg = analysis.load_summary(pairwise(tmp_path, failed={("blur", "crop")}))
    change, reference = class_change(summary, "color")
    assert reference == "color" and "color" not in change.index and "blur+crop" not in change.index
    assert list(change.columns) == CLASSES + [TOP1]
    labels = [a if a == b else f"{a}+{b}" for a in OPS for b in OPS]
    assert list(change.index) == [lab for lab in labels if lab not in ("color", "blur+crop")]  # grid order
    ref_i = 3 * 1 + 1
    for n, label in enumerate(labels):
        if label in change.index:
            for k, name in enumerate(CLASSES):
                naive = 100 * sum(accuracy(n, s, k) - accuracy(ref_i, s, k) for s in (0, 1)) / 2
                assert change.loc[label, name] == pytest.approx(naive)
            assert change.loc[label, TOP1] == pytest.approx(change.loc[label, CLASSES].mean())
    assert class_change(summary)[1] == "crop"  # default: the grid's first cell
    with pytest.raises(ValueError, match="unknown reference cell 'colour' \\(did you mean 'color'\\?\\)"):
        class_change(summary, "colour")
    assert f"{PER_CLASS}.star_mean" in agg.columns


def test_plot_and_report_add_curves_and_per_class(tmp_path):
    exp_dir = pairwise(tmp_path)
    names = sorted(p.name for p in analysis.plot(exp_dir, reference="blur"))
    assert names == sorted(f"{s}.{x}" for s in ("heatmap", "curves", "classes") for x in ("png", "pdf"))
    text = analysis.report(exp_dir, reference="blur").read_text()
    assert "![curves](figures/curves.png)" in text and "![classes](figures/classes.png)" in text
    assert "change against `blur`" in text and "| label | disk | ring | star |" in text
    summary = pd.read_csv(exp_dir / "summary.csv")
    assert summary[f"{PER_CLASS}.ring"].tolist() == [accuracy(n // 2, n % 2, 1) for n in range(18)]


def test_curves_are_grouped_by_the_rows_of_the_pairwise_grid(tmp_path):
    exp_dir = pairwise(tmp_path, failed={("blur", "crop")})
    exp = json.loads((exp_dir / "experiment.json").read_text())
    curves = load_curves(exp_dir, exp, analysis.load_summary(exp_dir)[0])
    assert len(curves) == 18 * 3 and set(curves["status"]) == {"finished", "failed"}  # failed cells keep curves
    g = groups(exp, curves)
    assert (g.row, g.rows, g.lines) == ("first", OPS, OPS)
    fig = plot_curves(curves, exp)
    axes = fig.axes
    assert len(axes) == 3 * 4  # rows: first op; columns: loss, pos_sim, uniform, knn (logged at epoch 2 only)
    assert [ax.get_ylabel() for ax in axes[::4]] == [f"1st: {op}" for op in OPS]
    assert [ax.get_title() for ax in axes[:4]] == [
        "training loss",
        "positive-pair cosine",
        "uniformity",
        "kNN top-1 (%)",
    ]
    blur_row_loss = axes[8].get_lines()
    assert len([line for line in blur_row_loss if len(line.get_xdata()) == 3]) == 3  # one line per 2nd op


def test_curves_of_a_pairwise_grid_with_a_method_facet_have_a_row_per_method_and_first_op(tmp_path):
    cells = [
        {
            "label": f"{pair_spec(a, b)},method={m}",
            "coords": {"first": a, "second": b, "method": m},
            "seed": 0,
            "i": 3 * i + j,
        }
        for m in ("simclr", "byol")
        for i, a in enumerate(OPS)
        for j, b in enumerate(OPS)
    ]
    exp_dir = write(tmp_path / "facets", cells, kind="pairwise", ops=OPS, paper="figure5", axes=["method"])
    exp = json.loads((exp_dir / "experiment.json").read_text())
    g = groups(exp, load_curves(exp_dir, exp, analysis.load_summary(exp_dir)[0]))
    assert g.rows == [f"method={m}, {op}" for m in ("simclr", "byol") for op in OPS] and g.lines == OPS
    assert set(g.data.groupby([g.row, "setting"]).size()) == {3}  # one cell (3 epochs) per line: methods apart


def test_curves_of_a_product_grid_are_grouped_by_its_swept_keys(tmp_path):
    temps, norms = [0.5, 0.1], [True, False]
    cells = [
        {
            "label": f"temperature={t},normalize={str(n).lower()}",
            "coords": {"loss.temperature": t, "loss.normalize": n},
            "seed": 0,
            "i": k,
        }
        for k, (t, n) in enumerate((t, n) for t in temps for n in norms)
    ]
    exp_dir = write(tmp_path / "t5", cells, kind="product", axes=["loss.temperature", "loss.normalize"])
    exp = json.loads((exp_dir / "experiment.json").read_text())
    g = groups(exp, load_curves(exp_dir, exp, analysis.load_summary(exp_dir)[0]))
    assert (g.row, g.rows, g.lines, g.line_name) == ("loss.temperature", temps, ["true", "false"], "normalize")
    one = write(
        tmp_path / "t1",
        [{**c, "coords": {"loss.temperature": c["coords"]["loss.temperature"]}} for c in cells[::2]],
        kind="product",
        axes=["loss.temperature"],
    )
    exp1 = json.loads((one / "experiment.json").read_text())
    g1 = groups(exp1, load_curves(one, exp1, analysis.load_summary(one)[0]))
    assert (g1.row, g1.rows, g1.lines) == (None, [None], ["0.5", "0.1"])
    assert len(plot_curves(load_curves(one, exp1, analysis.load_summary(one)[0]), exp1).axes) == 4


def test_a_cell_whose_log_cannot_be_read_is_left_out_of_the_curves_and_named(tmp_path, capsys):
    exp_dir = pairwise(tmp_path)
    (exp_dir / "c0" / "metrics.jsonl").write_text('{"epoch": 1, "wall_s": 2.0, "loss": 4.9}\n{"epoch": 2, "wa')
    exp = json.loads((exp_dir / "experiment.json").read_text())
    curves = load_curves(exp_dir, exp, analysis.load_summary(exp_dir)[0])
    assert "c0" not in set(curves["id"]) and len(set(curves["id"])) == 17
    assert "c0/metrics.jsonl: line 2 is not valid JSON" in capsys.readouterr().err
