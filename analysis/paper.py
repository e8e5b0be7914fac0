"""The paper's published numbers (only those in shared/paper/simclr-facts.md) and matching ours to them.

paper_numbers.csv is long format: one row per published number, with the table it comes from,
the setting that produced it (typed columns, empty where the table does not vary them) and the
value in top-1 % (linear evaluation, ImageNet, ResNet-50). Figure 5 and Figure 8 are images in
the paper, so none of their values are here. Our value of each paper setting is read from the
settings experiment.json gives (swept per cell, fixed for all) under one exact key: no guessing.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.errors import choices_error
from ablation.names import PRIMARY_METRIC

CSV = Path(__file__).with_name("paper_numbers.csv")
BOOL_COLUMNS = ("blur", "semi_hard", "normalize")
# Setting columns that pick a paper row for one of our labels, and columns that split the paper
# into separate series (e.g. SimCLR vs supervised) unless our setup fixes them.
KEYS = {
    "table1": ("strength", "blur"),
    "table4": ("loss", "semi_hard"),
    "table5": ("normalize", "temperature"),
    "tableB1": ("batch_size", "epochs"),
}
SERIES = {"table1": ("method",), "table4": (), "table5": (), "tableB1": ("lr_scaling",)}
# The setting key (ablation.identity.settings) that is each paper setting; None: no config key has it.
SETTINGS = {
    "strength": "augment.views.color.s",
    "blur": "augment.views.blur",
    "loss": "loss.name",
    "semi_hard": None,
    "normalize": "loss.normalize",
    "temperature": "loss.temperature",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "lr_scaling": "optim.lr_scaling",
    "method": None,
}
# A paper setting our cells do not have (no semi-hard mining; no blur op in the spec): the plain default.
DEFAULTS = {"blur": False, "semi_hard": False}


@lru_cache(maxsize=1)
def _numbers() -> pd.DataFrame:
    df = pd.read_csv(CSV)
    for col in BOOL_COLUMNS:
        df[col] = df[col].map({True: True, False: False, "True": True, "False": False})
    return df


def paper_table(name: str) -> pd.DataFrame:
    """The rows of one paper table ("table1", "table4", "table5", "tableB1"), unused columns dropped."""
    if name not in KEYS:
        raise choices_error("paper table", name, KEYS)
    rows = _numbers()[_numbers()["table"] == name].dropna(axis=1, how="all").reset_index(drop=True)
    for col in ("batch_size", "epochs"):  # whole numbers, read as float beside other tables' blanks
        if col in rows:
            rows[col] = rows[col].astype(int)
    return rows


def derive(column: str, swept: dict[str, Any], fixed: dict[str, Any]) -> Any:
    """Our value for a paper setting: the cell's swept settings first, then the experiment's fixed ones."""
    key = SETTINGS[column]
    for values in (swept, fixed):
        value = values.get(key) if key is not None else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return DEFAULTS.get(column)


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return _as_bool(ours) == _as_bool(theirs)
    try:
        return math.isclose(float(ours), float(theirs), rel_tol=1e-6)
    except (TypeError, ValueError):
        return str(ours).lower().replace("-", "_") == str(theirs).lower().replace("-", "_")


def _as_bool(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes", "y", "on")


def compare_with_paper(agg: pd.DataFrame, exp: dict[str, Any],
                       metric: str = PRIMARY_METRIC) -> pd.DataFrame | None:
    """Our mean (%) beside the paper's number for each label; None when exp["paper"] has no table.

    Paper columns are named "paper", or "paper (<series>)" (e.g. "paper (Supervised)") when the
    table holds several series our setup does not pick between.
    """
    name = exp.get("paper")
    if name not in KEYS:
        return None
    table, fixed_settings = paper_table(name), exp.get("fixed") or {}
    axes = [c for c in exp.get("swept") or [] if c in agg.columns]
    series = [c for c in SERIES[name] if derive(c, {}, fixed_settings) is None]
    fixed = {c: derive(c, {}, fixed_settings) for c in SERIES[name] if c not in series}
    rows = []
    for _, r in agg.iterrows():
        coords = {a: r[a] for a in axes}
        wanted = {c: derive(c, coords, fixed_settings) for c in KEYS[name]} | fixed
        match = table[[all(v is not None and _same(v, t[c]) for c, v in wanted.items())
                       for _, t in table.iterrows()]]
        row = {"label": r["label"], "ours": 100 * r[f"{metric}_mean"],
               "ours_std": 100 * r[f"{metric}_std"], "n": r["n"]}
        for _, t in match.iterrows():
            row[" ".join(["paper"] + [f"({t[c]})" for c in series])] = t["value"]
        rows.append(row)
    return pd.DataFrame(rows)


def spearman(a: pd.Series, b: pd.Series) -> tuple[float, int]:
    """Rank correlation over the pairs where both are known, and how many pairs that was.

    pandas' DataFrame.corr ranks and correlates itself (Series.corr would need scipy).
    """
    both = pd.DataFrame({"a": a.astype(float), "b": b.astype(float)}).dropna()
    if len(both) < 2:
        return math.nan, len(both)
    return float(both.corr(method="spearman").iloc[0, 1]), len(both)
