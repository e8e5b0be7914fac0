"""Paper-style figures: the Figure 5 heatmap for pairwise grids, sweep plots for product grids.

Figures are built on matplotlib's object API (Figure, no pyplot), so they render with the Agg
canvas and touch no global backend state. Missing, pending and failed cells are never drawn as 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablation import store
from ablation.errors import choices_error
from ablation.names import FAILED, PRIMARY_METRIC

from .budget import budget_csv, is_budget, plot_budget
from .classes import plot_class_change
from .curves import load_curves, plot_curves
from .paper import derive, paper_table
from .sensitivity import plot_drop
from .table import facet_groups, finished, load_experiment, load_summary, per_class, setup_line

Y_LABEL = "top-1 (%), linear evaluation"
CMAP = "viridis"  # sequential and colour-blind safe
AVERAGE = "Average"
# How the paper shows each product ablation: which swept setting goes on x, which is the hue.
FORMS: dict[str, dict[str, Any]] = {
    "table1": {"x": "augment.views", "hue": None, "kind": "bar"},
    "table4": {"x": "loss.name", "hue": None, "kind": "bar"},
    "table5": {"x": "loss.temperature", "hue": "loss.normalize", "kind": "line", "logx": True},
    "figure8": {"x": "model.out_dim", "hue": "model.head", "kind": "line", "logx": True},
    "tableB1": {"x": "train.epochs", "hue": "train.batch_size", "kind": "line"},
}


# ---- Figure 5: pairwise heatmap -------------------------------------------------------------


def _grid(values: pd.Series, ops: list[str], fill: Any = math.nan) -> pd.DataFrame:
    out = pd.DataFrame(
        fill,
        index=pd.Index(ops, name="first"),
        columns=pd.Index(ops, name="second"),
        dtype=object if isinstance(fill, str) else float,
    )
    for (first, second), v in values.items():
        out.loc[first, second] = v
    return out


def _pairwise(summary: pd.DataFrame, ops: list[str], metric: str) -> dict[str, pd.DataFrame]:
    """Mean and std (%) and the state of each (first, second) cell, in ops order."""
    unknown = sorted((set(summary["first"].dropna()) | set(summary["second"].dropna())) - set(ops))
    if unknown:
        raise choices_error("transformation", unknown[0], ops)
    done = finished(summary).dropna(subset=[metric]).groupby(["first", "second"])[metric]
    states = summary.groupby(["first", "second"])["status"].agg(lambda s: FAILED if (s == FAILED).any() else s.iloc[0])
    return {
        "mean": 100 * _grid(done.mean(), ops),
        "std": 100 * _grid(done.std(), ops),
        "state": _grid(states, ops, fill="not run"),
    }


def heatmap_matrix(summary: pd.DataFrame, ops: list[str], metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """The numbers behind Figure 5 in %: rows = 1st op, columns = 2nd op (both in `ops` order), then
    "Average" = the mean of each row's available cells, diagonal included, as in the paper."""
    return _with_average(_pairwise(summary, ops, metric)["mean"])


def heatmap_std(summary: pd.DataFrame, ops: list[str], metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """The std over seeds (%) of each heatmap cell, in heatmap_matrix's order (NaN with one seed)."""
    return _pairwise(summary, ops, metric)["std"]


def _with_average(mean: pd.DataFrame) -> pd.DataFrame:
    return mean.assign(**{AVERAGE: mean.mean(axis=1, skipna=True)})


def _annotations(stats: dict[str, pd.DataFrame], matrix: pd.DataFrame) -> np.ndarray:
    def text(first: str, second: str) -> str:
        value = matrix.loc[first, second]
        if math.isnan(value):
            return ""
        std = stats["std"].loc[first, second] if second != AVERAGE else math.nan
        return f"{value:.1f}" + ("" if math.isnan(std) else f"\n±{std:.1f}")

    return np.array([[text(f, s) for s in matrix.columns] for f in matrix.index])


def plot_heatmap(summary: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> Figure:
    """Figure 5: composition grid with an Average column; missing/failed cells hatched and named.

    A grid with facets (e.g. a method axis) gets one heatmap per facet, side by side, on one colour scale.
    """
    ops, groups = list(exp["ops"]), facet_groups(summary, exp)
    stats = [_pairwise(part, ops, metric) for _, part in groups]
    matrices = [_with_average(s["mean"]) for s in stats]
    known = np.concatenate([m.to_numpy(dtype=float).ravel() for m in matrices])
    known = known[~np.isnan(known)]
    vmin, vmax = (known.min(), known.max()) if known.size else (0.0, 100.0)
    n = len(ops)
    fig = Figure(figsize=(len(groups) * (0.95 * (n + 1) + 1.2) + 1.2, 0.75 * n + 1.9), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for k, (ax, (facet, _), st, matrix) in enumerate(zip(axes, groups, stats, matrices)):
        scale = (vmin, vmax if vmax > vmin else vmin + 1)
        _draw_heatmap(ax, st, matrix, ops, scale, colorbar=k == len(groups) - 1)
        ax.set_title(facet)
        if k:
            ax.set_ylabel("")
    fig.suptitle(f"{exp.get('title') or exp.get('name', '')}\n{setup_line(exp)}, {_mode(exp)}")
    return fig


def _draw_heatmap(
    ax: Axes,
    stats: dict[str, pd.DataFrame],
    matrix: pd.DataFrame,
    ops: list[str],
    scale: tuple[float, float],
    colorbar: bool,
) -> None:
    n = len(ops)
    ax.patch.set(facecolor="#f2f2f2", edgecolor="#c8c8c8", hatch="///")
    sns.heatmap(
        matrix,
        mask=matrix.isna(),
        annot=_annotations(stats, matrix),
        fmt="",
        cmap=CMAP,
        vmin=scale[0],
        vmax=scale[1],
        linewidths=1.5,
        linecolor="white",
        annot_kws={"fontsize": 9},
        cbar=colorbar,
        cbar_kws={"label": Y_LABEL, "shrink": 0.85},
        ax=ax,
    )
    for i, first in enumerate(ops):
        for j, second in enumerate(ops):
            if math.isnan(matrix.loc[first, second]):
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    stats["state"].loc[first, second],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#555555",
                    style="italic",
                )
    ax.axvline(n, color="white", lw=5)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    ax.tick_params(axis="x", rotation=30, length=0)
    ax.tick_params(axis="y", rotation=0, length=0)


def _mode(exp: dict[str, Any]) -> str:
    fixed = exp.get("fixed") or {}
    return f"{fixed.get('augment.mode', 'asymmetric')} views, base: {fixed.get('augment.base', 'none')}"


# ---- product sweeps ------------------------------------------------------------------------


@dataclass
class Panel:
    """One subplot: rows of (x, hue, top-1 %) drawn as bars or lines, mean ± std over rows."""

    title: str
    data: pd.DataFrame
    x: str
    hue: str | None
    kind: str
    logx: bool = False
    xlabel: str | None = None
    order: list[Any] | None = None  # bar order; default sorted


def _ours(summary: pd.DataFrame, exp: dict[str, Any], metric: str) -> Panel:
    """Our grid in the paper's form when the paper table is known (and swept), else axis 1 on x; the hue
    is the form's when swept, else the next axis (a method axis beside Table 1's strengths)."""
    axes, swept = list(exp.get("axes") or []), list(exp.get("swept") or [])
    if not axes:
        raise ValueError(f"product experiment {exp.get('name')!r} names no swept axes")
    form = FORMS.get(exp.get("paper") or "")
    if form and form["x"] in swept:
        x = form["x"]
        hue = form["hue"] if form["hue"] in swept else next((a for a in axes if a != x), None)
    else:
        form, x = {}, axes[0]
        hue = next((a for a in axes if a != x), None)
    data = finished(summary).dropna(subset=[metric])
    data = data.assign(**{Y_LABEL: 100 * data[metric]})
    numeric = pd.api.types.is_numeric_dtype(data[x]) and not pd.api.types.is_bool_dtype(data[x])
    kind = form.get("kind") or ("line" if numeric else "bar")
    return Panel(f"ours: {setup_line(exp)}", data, x, hue, kind, bool(form.get("logx")) and numeric)


def _paper_panels(exp: dict[str, Any]) -> list[Panel]:
    """The paper's own numbers for the experiment's table, one panel per series it cannot pick."""
    name, title = exp.get("paper"), "paper (ImageNet, ResNet-50)"
    if name not in ("table1", "table4", "table5", "tableB1"):
        return []
    table = paper_table(name).rename(columns={"value": Y_LABEL})
    if name == "table1":
        return [
            Panel(
                title,
                table,
                "setting",
                "method",
                "bar",
                xlabel="colour distortion strength",
                order=list(dict.fromkeys(table["setting"])),
            )
        ]
    if name == "table4":
        return [Panel(title, table, "setting", None, "bar", xlabel="loss", order=list(dict.fromkeys(table["setting"])))]
    if name == "table5":
        return [Panel(title, table, "temperature", "normalize", "line", logx=True)]
    fixed = derive("lr_scaling", {}, exp.get("fixed") or {})
    scalings = [fixed] if fixed in set(table["lr_scaling"]) else _ordered(table["lr_scaling"])
    return [
        Panel(f"{title}, {s} lr scaling", table[table["lr_scaling"] == s], "epochs", "batch_size", "line")
        for s in scalings
    ]


def _ordered(values: pd.Series) -> list[Any]:
    """Numbers ascending; anything else in the experiment's own order (the YAML's)."""
    uniques = list(dict.fromkeys(values.dropna()))
    numbers = all(pd.api.types.is_number(v) and not pd.api.types.is_bool(v) for v in uniques)
    return sorted(uniques) if numbers else uniques


def _style(ax: Axes, data: pd.DataFrame, hue: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Hue as text in sorted order; ordered numbers (batch sizes) get a sequential palette."""
    if hue is None:
        return data, {"ax": ax, "color": sns.color_palette("colorblind")[0]}
    levels = _ordered(data[hue])
    ordinal = all(pd.api.types.is_number(v) and not pd.api.types.is_bool(v) for v in levels)
    palette = sns.color_palette(CMAP if ordinal else "colorblind", len(levels))
    return data.assign(**{hue: data[hue].astype(str)}), {
        "ax": ax,
        "hue": hue,
        "hue_order": [str(v) for v in levels],
        "palette": palette,
    }


def _draw(ax: Axes, panel: Panel) -> None:
    """Mean with ±1 std error bars over replicates (seaborn aggregates the raw rows)."""
    ax.set_title(panel.title)
    if panel.data.empty:
        ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
        return
    data, style = _style(ax, panel.data, panel.hue)
    if panel.kind == "line":
        sns.lineplot(
            data=data,
            x=panel.x,
            y=Y_LABEL,
            marker="o",
            errorbar="sd",
            err_style="bars",
            err_kws={"capsize": 3},
            **style,
        )
        if panel.logx:
            ticks = _ordered(data[panel.x])
            ax.set_xscale("log")
            ax.set_xticks(ticks, labels=[f"{v:g}" for v in ticks])
            ax.minorticks_off()
    else:
        sns.barplot(
            data=data,
            x=panel.x,
            y=Y_LABEL,
            order=panel.order or _ordered(data[panel.x]),
            errorbar="sd",
            capsize=0.15,
            **style,
        )
        if max(len(t.get_text()) for t in ax.get_xticklabels()) > 6:
            ax.tick_params(axis="x", rotation=25)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
    ax.set(xlabel=panel.xlabel or panel.x, ylabel=Y_LABEL)
    if panel.hue is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title=panel.hue.split(".")[-1])


def plot_sweep(summary: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> Figure:
    """A product ablation in the paper's form, with the paper's numbers beside ours when published."""
    panels = [_ours(summary, exp, metric), *_paper_panels(exp)]
    fig = Figure(figsize=(5.6 * len(panels), 4.6), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw(ax, panel)
    fig.suptitle(exp.get("title") or exp.get("name", ""))
    return fig


# ---- entry point ---------------------------------------------------------------------------


def save(fig: Figure, base: Path) -> list[Path]:
    """base.png (for the report) and base.pdf (for print), each written atomically."""
    return [
        store.atomic_write(base.with_suffix(f".{fmt}"), functools.partial(fig.savefig, format=fmt, dpi=200), mode="wb")
        for fmt in ("png", "pdf")
    ]


def _grid_figure(summary: pd.DataFrame, exp: dict[str, Any], figures: Path) -> list[Path]:
    """The grid's own figure: heatmap (pairwise), budget (also .csv) or sweep (product), and drop for a
    method x augmentation grid."""
    if exp.get("kind") == "pairwise":
        return save(plot_heatmap(summary, exp), figures / "heatmap")
    if is_budget(exp):
        base = figures / "budget"
        table = store.atomic_write(
            base.with_suffix(".csv"), functools.partial(budget_csv(summary, exp).to_csv, index=False)
        )
        return [*save(plot_budget(summary, exp), base), table]
    drop = plot_drop(summary, exp)
    return save(plot_sweep(summary, exp), figures / "sweep") + (save(drop, figures / "drop") if drop else [])


def plot(exp_dir: str | Path, reference: str | None = None) -> list[Path]:
    """Write results/<exp>/figures/{heatmap|budget|sweep}.{png,pdf} (budget also .csv; drop.* for a method
    x augmentation grid), curves.* once a cell has logged an epoch and classes.* (per-class change against
    the `reference` label) once a cell has a per-class result; return the paths written."""
    exp_dir = Path(exp_dir)
    exp = load_experiment(exp_dir)
    summary, _ = load_summary(exp_dir)
    figures = exp_dir / store.FIGURES
    with sns.axes_style("ticks"), sns.plotting_context("paper", font_scale=1.25):
        paths = _grid_figure(summary, exp, figures)
        curves = load_curves(exp_dir, exp, summary)
        if not curves.empty:
            paths += save(plot_curves(curves, exp), figures / "curves")
        if reference is not None or not per_class(summary).empty:
            paths += save(plot_class_change(summary, exp, reference), figures / "classes")
    return paths
