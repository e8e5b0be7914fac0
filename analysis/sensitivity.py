"""How much each method loses when augmentations are taken away: a method axis crossed with one other
swept key (the augmentation), read as the drop in top-1 from the reference level of that key.

The reference is the key's first value in grid order (the experiment lists the full augmentation
first). Drops are paired by seed (reference minus condition, same method and seed), in points.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ablation.names import PRIMARY_METRIC

from .table import finished, markdown_table, setup_line

METHOD_KEY = "method"
DROP = "top-1 drop from the reference (points)"


def sensitivity_axes(exp: dict[str, Any]) -> tuple[str, str] | None:
    """(method key, augmentation key) when a product grid sweeps the method and exactly one other key
    (paper tables, e.g. Table 1's strengths, keep the paper's form instead)."""
    axes = list(exp.get("axes") or [])
    others = [a for a in axes if a != METHOD_KEY]
    if exp.get("kind") != "product" or exp.get("paper") or METHOD_KEY not in axes or len(others) != 1:
        return None
    return METHOD_KEY, others[0]


def _axes(exp: dict[str, Any]) -> tuple[str, str]:
    keys = sensitivity_axes(exp)
    if keys is None:
        raise ValueError(f"experiment {exp.get('name')!r} does not cross a method axis with one other axis")
    return keys


def drop_table(summary: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> pd.DataFrame | None:
    """One row per (method, condition, seed) with the drop in points; None when the grid has no such axes."""
    keys = sensitivity_axes(exp)
    if keys is None or summary.empty:
        return None
    method, other = keys
    conditions = list(dict.fromkeys(summary[other]))
    top1 = (
        finished(summary)
        .dropna(subset=[metric])
        .pivot_table(index=[method, "seed"], columns=other, values=metric, aggfunc="mean")
    )
    if conditions[0] not in top1.columns:
        return pd.DataFrame(columns=[method, other, "seed", "drop"])
    drop = 100 * top1.rsub(top1[conditions[0]], axis=0)
    long = drop[[c for c in conditions[1:] if c in drop.columns]].stack().rename("drop").reset_index()
    return long.dropna(subset=["drop"])


def drop_summary(summary: pd.DataFrame, exp: dict[str, Any]) -> pd.DataFrame | None:
    """Methods x conditions, each cell the mean drop ± std over seeds (text), in grid order."""
    long = drop_table(summary, exp)
    if long is None:
        return None
    method, other = _axes(exp)
    stats = long.groupby([method, other], sort=False)["drop"].agg(["mean", "std"])

    def text(mean: float, std: float) -> str:
        return f"{mean:+.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")

    table = stats.apply(lambda r: text(r["mean"], r["std"]), axis=1).unstack(other)
    methods = [m for m in dict.fromkeys(summary[method]) if m in table.index]
    conditions = [c for c in dict.fromkeys(summary[other]) if c in table.columns]
    return table.loc[methods, conditions].reset_index()


def report_lines(summary: pd.DataFrame, exp: dict[str, Any]) -> list[str]:
    """The report's sensitivity section (empty when the grid has no method and augmentation axes)."""
    table = drop_summary(summary, exp)
    if table is None:
        return []
    _, other = _axes(exp)
    reference = summary[other].iloc[0]
    return [
        "## Sensitivity to augmentations, per method",
        "",
        f"Top-1 points each method loses against its own `{reference}` cell (same seed; negative: a gain).",
        "",
        markdown_table(table.fillna("")) if len(table) else "No finished pair of cells yet.",
        "",
    ]


def plot_drop(summary: pd.DataFrame, exp: dict[str, Any]) -> Figure | None:
    """Bars: the drop per condition (x) and method (colour), mean ± std over seeds; None without such axes."""
    long = drop_table(summary, exp)
    if long is None:
        return None
    method, other = _axes(exp)
    conditions = list(dict.fromkeys(summary[other]))
    methods = list(dict.fromkeys(summary[method]))
    fig = Figure(figsize=(1.5 * len(conditions) + 3.5, 4.6), layout="constrained")
    ax: Any = fig.add_subplot()
    if long.empty:
        ax.text(0.5, 0.5, "no finished pairs yet", ha="center", va="center", transform=ax.transAxes)
    else:
        sns.barplot(
            data=long.assign(**{method: long[method].astype(str)}),
            x=other,
            y="drop",
            hue=method,
            order=conditions[1:],
            hue_order=[str(m) for m in methods],
            errorbar="sd",
            capsize=0.1,
            palette=sns.color_palette("colorblind", len(methods)),
            ax=ax,
        )
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title=method)
    ax.axhline(0, color="#555555", lw=0.8)
    ax.set(xlabel=f"{other.split('.')[-1]} (reference: {conditions[0]})", ylabel=DROP)
    ax.tick_params(axis="x", rotation=20)
    for label in ax.get_xticklabels():
        label.set_ha("right")
    ax.set_title(f"{exp.get('title') or exp.get('name', '')}\n{setup_line(exp)}")
    return fig
