"""Training curves: loss, embedding statistics and, where logged, probe accuracy against epochs for
every cell, grouped the way experiment.json says the grid was swept.

Pairwise grids get one row of panels per row of the grid (the first transformation, per facet such
as a method) and one line per second transformation; product grids one row per value of the first swept key and one line
per setting of the others (a single swept key: one row, one line per value). Replicates are drawn
as their mean with a ±1 std band. Cells that failed keep their curve: it shows how they failed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ablation.names import EPOCH, KNN_TOP1, LINEAR_TOP1, LOSS, POS_SIM, UNIFORM
from ablation.store import Corrupt, read_metrics

from .table import axes_of, facet_axes, facet_label, setup_line

# metrics.jsonl fields drawn, in column order, with their axis labels; probes only where logged
CURVES = {
    LOSS: "training loss",
    POS_SIM: "positive-pair cosine",
    UNIFORM: "uniformity",
    LINEAR_TOP1: "linear top-1 (%)",
    KNN_TOP1: "kNN top-1 (%)",
}
PERCENT = (LINEAR_TOP1, KNN_TOP1)
LINE = "setting"
ROW = "facet, 1st"  # pairwise grids with facets: one row of panels per facet and first transformation


def load_curves(exp_dir: str | Path, exp: dict[str, Any], summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, epoch): the cell's id, label, coordinates, seed and status, and its
    metrics.jsonl fields; empty when no cell has finished an epoch. A cell whose log cannot be read is
    left out with one line naming the file (the cell itself still reports its result)."""
    exp_dir = Path(exp_dir)
    cells = summary[["id", "label", "seed", "status", *axes_of(exp)]].to_dict("records")
    frames = [pd.DataFrame(rows).assign(**cell) for cell in cells if (rows := _rows(exp_dir / str(cell["id"])))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _rows(cell_dir: Path) -> list[dict]:
    try:
        return read_metrics(cell_dir)
    except Corrupt as err:
        print(f"curves: left out {err}", file=sys.stderr)
        return []


@dataclass
class Grouping:
    """How the curves are laid out: `data` has a LINE column; one row of panels per value in `rows`
    of column `row` (None: a single row); one line per value in `lines`."""

    data: pd.DataFrame
    row: str | None
    rows: list
    lines: list[str]
    row_name: str
    line_name: str


def groups(exp: dict[str, Any], curves: pd.DataFrame) -> Grouping:
    """The grid's own grouping, read from experiment.json (kind, ops, axes), in grid order."""
    if exp.get("kind") == "pairwise":
        ops = [str(op) for op in exp["ops"]]
        data = curves.assign(**{LINE: curves["second"].astype(str)})
        facets = facet_axes(exp, curves.columns)
        if not facets:
            return Grouping(data, "first", ops, ops, "1st", "2nd")
        facet = curves[facets].apply(lambda r: facet_label(facets, r), axis=1)
        data = data.assign(**{ROW: facet + ", " + curves["first"].astype(str)})
        return Grouping(data, ROW, [f"{f}, {op}" for f in dict.fromkeys(facet) for op in ops], ops, "1st", "2nd")
    axes = list(exp.get("axes") or [])
    if not axes:
        raise ValueError(f"product experiment {exp.get('name')!r} names no swept axes")
    row, rest = (None, axes) if len(axes) == 1 else (axes[0], axes[1:])
    short = [a.split(".")[-1] for a in rest]
    text = curves[rest].map(lambda v: str(v).lower() if isinstance(v, bool) else str(v))  # as in the labels
    line = text.apply(
        lambda r: ",".join(r) if len(rest) == 1 else ",".join(f"{k}={v}" for k, v in zip(short, r)), axis=1
    )
    rows = list(dict.fromkeys(curves[row])) if row else [None]
    return Grouping(
        curves.assign(**{LINE: line}),
        row,
        rows,
        list(dict.fromkeys(line)),
        row.split(".")[-1] if row else "",
        ", ".join(short),
    )


def plot_curves(curves: pd.DataFrame, exp: dict[str, Any]) -> Figure:
    """Rows: groups of the grid; columns: the CURVES that some cell logged; lines: settings in a group."""
    g = groups(exp, curves)
    metrics = [m for m in CURVES if m in g.data and g.data[m].notna().any()]
    palette = dict(zip(g.lines, sns.color_palette("colorblind" if len(g.lines) <= 10 else "husl", len(g.lines))))
    data = g.data.assign(**{m: 100 * g.data[m] for m in PERCENT if m in metrics})
    fig = Figure(figsize=(3.1 * len(metrics) + 1.8, 2.2 * len(g.rows) + 0.9), layout="constrained")
    axes = fig.subplots(len(g.rows), len(metrics), squeeze=False, sharex=True, sharey="col")
    for i, value in enumerate(g.rows):
        group = data if g.row is None else data[data[g.row] == value]
        for j, metric in enumerate(metrics):
            ax: Any = axes[i][j]
            shown = group.dropna(subset=[metric])
            if not shown.empty:
                sns.lineplot(
                    data=shown,
                    x=EPOCH,
                    y=metric,
                    hue=LINE,
                    hue_order=g.lines,
                    palette=palette,
                    errorbar="sd",
                    marker="o",
                    markersize=3,
                    ax=ax,
                    legend=False,
                )
            ax.set(xlabel="epoch" if i == len(g.rows) - 1 else "", ylabel="")
            if i == 0:
                ax.set_title(CURVES[metric])
            if j == 0 and g.row is not None:
                ax.set_ylabel(f"{g.row_name}: {value}" if exp.get("kind") == "pairwise" else f"{g.row_name}={value}")
    handles = [Line2D([], [], color=color, marker="o", markersize=3) for color in palette.values()]
    fig.legend(handles, g.lines, loc="outside right upper", frameon=False, title=g.line_name)
    fig.suptitle(f"Training curves: {exp.get('title') or exp.get('name', '')}\n{setup_line(exp)}")
    return fig
