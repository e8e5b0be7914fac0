"""The budget figure: accuracy against training images seen, one line per view spec, one panel per mode.

It answers "at what training budget do compositions beat the single ops?" The experiment's
``figure`` section says which swept key is the budget, which are the lines and the panels, and which
line values are compositions and which single ops; nothing is inferred from labels. A budget is
marked as the crossing when every composition beats every single op there and at every larger
budget of the panel (a lead that is lost again is not a crossing).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablation.names import PRIMARY_METRIC, RANDOM_INIT_TOP1

from .table import finished, setup_line

Y_LABEL = "top-1 (%), linear evaluation"
X_LABEL = "training images seen"


def budget_means(summary: pd.DataFrame, figure: dict[str, Any], metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """Mean top-1 (%) per (facet, hue, budget) over finished replicates, with images seen and the floor."""
    done = finished(summary).dropna(subset=[metric])
    keys = [figure["facet"], figure["hue"], figure["x"]]
    table = (
        done.groupby(keys, sort=False)
        .agg(
            top1=(metric, "mean"),
            images_seen=("images_seen", "mean"),
            random_init=(RANDOM_INIT_TOP1, "mean"),
            n=(metric, "size"),
        )
        .reset_index()
    )
    table[["top1", "random_init"]] *= 100
    return table


def crossing(panel: pd.DataFrame, figure: dict[str, Any]) -> float | None:
    """The smallest budget from which every composition beats every single op (None: none such)."""
    wide = panel.pivot_table(index="images_seen", columns=figure["hue"], values="top1")
    needed = list(figure["compositions"]) + list(figure["singles"])
    if any(v not in wide.columns for v in needed):
        return None
    wide = wide[needed].dropna()
    wins = wide[figure["compositions"]].min(axis=1) > wide[figure["singles"]].max(axis=1)
    first = None
    for budget, win in wins.sort_index(ascending=False).items():  # walk down while it keeps winning
        if not win:
            break
        first = budget
    return first


def plot_budget(summary: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> Figure:
    """One panel per facet value: lines per hue value (compositions solid, singles dashed), floor grey."""
    figure = exp["figure"]
    table = budget_means(summary, figure, metric)
    facets = list(dict.fromkeys(table[figure["facet"]])) or ["(no finished cells)"]
    fig = Figure(figsize=(5.4 * len(facets), 4.4), layout="constrained")
    axes = fig.subplots(1, len(facets), squeeze=False, sharey=True)[0]
    order = list(figure["compositions"]) + list(figure["singles"])
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    for ax, facet in zip(axes, facets):
        panel = table[table[figure["facet"]] == facet]
        _draw_panel(ax, panel, figure, order, palette)
        ax.set_title(f"{facet} views")
    fig.suptitle(f"{exp.get('title') or exp.get('name', '')}\n{setup_line(exp)}")
    return fig


def _draw_panel(ax: Axes, panel: pd.DataFrame, figure: dict[str, Any], order: list[str], palette: dict) -> None:
    if panel.empty:
        ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
        return
    for value in [v for v in order if v in set(panel[figure["hue"]])]:
        line = panel[panel[figure["hue"]] == value].sort_values("images_seen")
        ax.plot(
            line["images_seen"],
            line["top1"],
            marker="o",
            color=palette[value],
            label=value,
            linestyle="-" if value in figure["compositions"] else "--",
        )
    floor = panel.groupby("images_seen")["random_init"].mean()
    ax.plot(floor.index, floor.values, color="0.6", linestyle=":", label="random-init encoder")
    at = crossing(panel, figure)
    if at is not None:
        ax.axvline(at, color="0.3", lw=1)
        ax.annotate(
            f"compositions lead from {at:,.0f}",
            (at, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=8,
        )
    else:
        ax.text(
            0.02,
            0.02,
            f"no crossing up to {panel['images_seen'].max():,.0f} images",
            transform=ax.transAxes,
            fontsize=8,
            color="0.3",
        )
    ax.set_xscale("log", base=2)
    ax.set(xlabel=X_LABEL, ylabel=Y_LABEL)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=8)


def budget_csv(summary: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """The figure's numbers as a table (one row per panel, line and budget)."""
    table = budget_means(summary, exp["figure"], metric)
    return table.round({"top1": 2, "random_init": 2, "images_seen": 0})


def is_budget(exp: dict[str, Any]) -> bool:
    return (exp.get("figure") or {}).get("kind") == "budget"
