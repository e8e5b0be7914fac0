"""Per-class linear top-1 against a reference cell: which classes each cell gains and loses.

A mean accuracy hides that an augmentation can raise some classes by many points and cut others;
this figure shows, for every cell (mean over its finished replicates), each class's top-1 minus the
reference cell's, with the change of the overall top-1 last for scale.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ablation.errors import choices_error
from ablation.names import PER_CLASS

from .table import finished, per_class, setup_line

TOP1 = "top-1"
ANNOTATE_UP_TO = 20  # classes; beyond that the numbers do not fit the cells


def class_change(summary: pd.DataFrame, reference: str | None = None) -> tuple[pd.DataFrame, str]:
    """(cells x classes + TOP1: change in points against `reference`, the reference's label).

    The reference is a label; by default the grid's first cell with a per-class result."""
    table = per_class(summary)
    if table.empty:
        raise ValueError(f"no finished cell has a per-class result ({PER_CLASS} in result.json)")
    labels = list(table.index)
    reference = labels[0] if reference is None else reference
    if reference not in table.index:
        raise choices_error("reference cell", reference, labels)
    top1 = 100 * finished(summary).groupby("label", sort=False)["linear_top1"].mean()
    change = table - table.loc[reference]
    change[TOP1] = top1.loc[labels] - top1.loc[reference]
    return change.drop(index=reference), reference


def plot_class_change(summary: pd.DataFrame, exp: dict[str, Any], reference: str | None = None) -> Figure:
    """Diverging heatmap (blue: the cell beats the reference on that class, red: it loses), centred on 0."""
    change, reference = class_change(summary, reference)
    rows, cols = change.shape
    annotate = cols <= ANNOTATE_UP_TO + 1
    fig = Figure(figsize=(0.62 * cols + 3.2, 0.32 * max(rows, 3) + 1.9), layout="constrained")
    ax = fig.add_subplot()
    ax.patch.set(facecolor="#f2f2f2", edgecolor="#c8c8c8", hatch="///")  # a class with no test image
    bound = max(float(change.abs().max().max()), 1.0) if change.notna().any().any() else 1.0
    sns.heatmap(
        change,
        mask=change.isna(),
        center=0,
        vmin=-bound,
        vmax=bound,
        cmap="RdBu",
        annot=annotate,
        fmt="+.1f",
        annot_kws={"fontsize": 7},
        linewidths=0.5,
        linecolor="white",
        ax=ax,
        cbar_kws={"label": f"linear top-1 change vs {reference} (points)", "shrink": 0.85},
    )
    ax.axvline(cols - 1, color="white", lw=4)
    ax.set(xlabel="class", ylabel="cell")
    ax.tick_params(axis="x", rotation=45, length=0)
    ax.tick_params(axis="y", rotation=0, length=0)
    base = finished(summary).groupby("label", sort=False)["linear_top1"].mean().loc[reference]
    ax.set_title(f"Per-class linear top-1 against {reference} ({100 * base:.1f}% top-1)\n{setup_line(exp)}")
    return fig
