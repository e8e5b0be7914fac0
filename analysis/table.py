"""Grid results -> pandas tables: one row per cell (summary.csv) and one per label (summary_agg.csv).

Reads the results layout (experiment.json, <cell>/cell.json, result.json, job.json) through
ablation.store, and names through ablation.names, only: analysis never depends on the code that trains or
launches cells. The
columns of a product grid are the settings experiment.json says it swept (exact dotted keys); a
cell whose files cannot be read is a row with status `corrupt` and the file in `reason`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ablation import store
from ablation.names import CORRUPT, FINISHED, LAUNCHED, LBFGS, METRICS, PENDING, PER_CLASS, RUN_STATS, UNKNOWN


def load_experiment(exp_dir: str | Path) -> dict[str, Any]:
    """experiment.json of a results directory; a clear error when the grid was never launched."""
    exp = store.read_record(Path(exp_dir) / store.EXPERIMENT)
    if exp is None:
        raise FileNotFoundError(f"no readable experiment.json in {exp_dir}; launch the grid first (ablate grid EXP)")
    return exp


def axes_of(exp: dict[str, Any]) -> list[str]:
    """The coordinate columns: first/second (then any facet, e.g. method) for pairwise grids, the swept
    settings for products."""
    if exp.get("kind") == "pairwise":
        return ["first", "second", *(exp.get("axes") or [])]
    return list(exp.get("swept") or [])


def facet_groups(summary: pd.DataFrame, exp: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """A pairwise grid's cells per facet ("method=byol", in grid order); one untitled group without facets."""
    facets = facet_axes(exp, summary.columns)
    if exp.get("kind") != "pairwise" or not facets:
        return [("", summary)]
    groups = summary.groupby(facets, sort=False, dropna=False)
    return [(facet_label(facets, key), part) for key, part in groups]


def facet_axes(exp: dict[str, Any], columns: Container[str]) -> list[str]:
    """A pairwise grid's facet axes (e.g. method) that these columns hold."""
    return [a for a in exp.get("axes") or [] if a in columns]


def facet_label(facets: list[str], values: Iterable[object]) -> str:
    """How a facet's cells are titled: "method=byol" ("a=1,b=2" for several axes; last key part only)."""
    return ",".join(f"{f.split('.')[-1]}={v}" for f, v in zip(facets, values))


def _cell_ids(exp_dir: Path, exp: dict[str, Any]) -> list[str]:
    """Cells in the launcher's order, then any cell directory it did not list."""
    listed = list(exp.get("cells") or [])
    extra = sorted(
        p.name for p in exp_dir.iterdir() if p.is_dir() and p.name not in listed and (p / store.CELL).exists()
    )
    return listed + extra


def _status(result: dict | None, job: dict | None) -> str:
    if result is not None:
        return str(result.get("status", UNKNOWN))
    if job is not None:  # submitted or claimed; the live Slurm state is `ablate status`'s job
        return LAUNCHED
    return PENDING


def _read(cell_dir: Path) -> tuple[dict, dict | None, dict | None, store.Corrupt | None]:
    """(cell.json, result.json, job.json, the first unreadable one) of a cell directory."""
    parts: list[Any] = []
    bad = None
    for read in (
        lambda: store.read_record(cell_dir / store.CELL) or {},
        lambda: store.read_result(cell_dir),
        lambda: store.read_job(cell_dir),
    ):
        try:
            parts.append(read())
        except store.Corrupt as err:
            parts.append(None)
            bad = bad or err
    return parts[0] or {}, parts[1], parts[2], bad


def _cell_parts(cell_dir: Path, settings: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(identity + run stats, coords, metrics) of one cell directory; `settings`: its swept values."""
    cell, result, job, bad = _read(cell_dir)
    info = {**(result or {}), **cell}  # cell.json is the source of truth for identity
    row = {
        "id": info.get("id", cell_dir.name),
        "label": info.get("label"),
        "seed": info.get("seed"),
        "status": CORRUPT if bad else _status(result, job),
        "reason": str(bad) if bad else (result or {}).get("reason"),
        **{s: _number((result or {}).get(s)) for s in RUN_STATS},
    }
    # Only finished cells carry numbers: a failed run's partial metrics must never be averaged.
    done = row["status"] == FINISHED
    metrics = {m: _number(v) if done else math.nan for m, v in _flat((result or {}).get("metrics") or {}).items()}
    return row, {**(info.get("coords") or {}), **settings}, metrics


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """Nested metrics (the per-class top-1) as one column each, "<metric>.<name>"."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        out.update({f"{key}.{name}": v for name, v in value.items()} if isinstance(value, dict) else {key: value})
    return out


def per_class_columns(columns: Any) -> dict[str, str]:
    """{summary column: class name} of the per-class linear top-1 columns, in result.json's order."""
    prefix = f"{PER_CLASS}."
    return {c: c[len(prefix) :] for c in columns if isinstance(c, str) and c.startswith(prefix)}


def per_class(summary: pd.DataFrame) -> pd.DataFrame:
    """Labels (grid order) x classes: per-class linear top-1 in %, mean over finished replicates;
    empty when no finished cell recorded it."""
    columns = per_class_columns(summary.columns)
    table = 100 * finished(summary).groupby("label", sort=False)[list(columns)].mean()
    return table.rename(columns=columns).dropna(how="all")


def _number(value: Any) -> float:
    """Metrics as floats, NaN when absent (pending/failed cells never read as 0)."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def finished(summary: pd.DataFrame) -> pd.DataFrame:
    """Only the cells that finished; failed and pending cells carry no numbers."""
    return summary[summary["status"] == FINISHED]


def aggregate(summary: pd.DataFrame, coords: list[str], metrics: list[str]) -> pd.DataFrame:
    """Replicates (seeds) per label -> <metric>_mean, <metric>_std, n (finished replicates), cells."""
    values = list(metrics) + list(RUN_STATS)
    labelled = summary.dropna(subset=["label"])
    keys = labelled.drop_duplicates("label").set_index("label")[coords]
    done = finished(labelled).groupby("label", sort=False)
    stats = done[values].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    agg = keys.join(done.size().rename("n")).join(stats)
    agg["n"] = agg["n"].fillna(0).astype(int)
    agg["cells"] = labelled.groupby("label", sort=False).size()
    return agg.reset_index()


def load_summary(exp_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, aggregated) DataFrames built from the cell directories of one experiment."""
    exp_dir = Path(exp_dir)
    exp = load_experiment(exp_dir)
    settings = exp.get("settings") or {}
    parts = [_cell_parts(exp_dir / cid, settings.get(cid) or {}) for cid in _cell_ids(exp_dir, exp)]
    coords = list(dict.fromkeys(axes_of(exp) + [k for _, c, _ in parts for k in c]))
    metrics = list(dict.fromkeys(list(METRICS) + [k for _, _, m in parts for k in m]))
    rows = [{**row, **c, **{m: met.get(m, math.nan) for m in metrics}} for row, c, met in parts]
    columns = ["id", "label", *coords, "seed", "status", "reason", *metrics, *RUN_STATS]
    summary = pd.DataFrame(rows, columns=columns)
    return summary, aggregate(summary, coords, metrics)


def collect(exp_dir: str | Path) -> list[Path]:
    """Write summary.csv and summary_agg.csv (both plain pandas.read_csv-able); return their paths."""
    exp_dir = Path(exp_dir)
    summary, agg = load_summary(exp_dir)
    return [
        store.atomic_write(exp_dir / name, functools.partial(df.to_csv, index=False))
        for name, df in ((store.SUMMARY, summary), (store.SUMMARY_AGG, agg))
    ]


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no tabulate dependency); NaN shows as an empty cell."""

    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


PROTOCOL_KEY = "eval.linear"  # the setting that names a grid's linear evaluation protocol


def setup_line(exp: dict[str, Any]) -> str:
    """ "cifar10, resnet18, 100 epochs, lbfgs probe": what every figure title and the report name first (a grid
    from before the protocol was a key was scored by the lbfgs probe)."""
    fixed = exp.get("fixed") or {}
    epochs = f"{fixed['train.epochs']} epochs" if "train.epochs" in fixed else "epochs swept"
    probe = f"{fixed.get(PROTOCOL_KEY, LBFGS)} probe" if PROTOCOL_KEY not in (exp.get("swept") or []) else "probe swept"
    return f"{fixed.get('data.name', '?')}, {fixed.get('model.encoder', '?')}, {epochs}, {probe}"
