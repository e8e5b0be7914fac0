"""The paper's published numbers (only those in shared/paper/simclr-facts.md) and matching ours to them.

paper_numbers.csv is long format: one row per published number, with the table it comes from,
the setting that produced it (typed columns, empty where the table does not vary them or where a
setting does not apply: AutoAugment has no colour strength) and the value in top-1 % (linear
evaluation, ImageNet, ResNet-50). Figure 5 and Figure 8 are images in the paper, so none of their
values are here. Our value of each paper setting is read from the settings experiment.json gives
(swept per cell, fixed for all) under one exact key: no guessing.
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
BOOL_COLUMNS = ("blur", "autoaugment", "semi_hard", "normalize")
# Setting columns that pick a paper row for one of our labels, and columns that split the paper
# into separate series (e.g. SimCLR vs supervised) unless our setup fixes them.
KEYS = {
    "table1": ("strength", "blur", "autoaugment"),
    "table4": ("loss", "semi_hard"),
    "table5": ("normalize", "temperature"),
    "tableB1": ("batch_size", "epochs"),
}
SERIES = {"table1": ("method",), "table4": (), "table5": (), "tableB1": ("lr_scaling",)}
# Tables whose rows the paper reports at their best over hyper-parameters it tuned per row: ours is the best
# of the cells that match a row (Table 4: each loss at its best temperature or margin).
TUNED = {"table4": "each loss at its best temperature (margin loss: margin) of the grid's, as the paper tuned each"}
# The setting key (ablation.identity.settings) that is each paper setting.
SETTINGS = {
    "strength": "augment.views.color.s",
    "blur": "augment.views.blur",
    "autoaugment": "augment.views.autoaugment",
    "loss": "loss.name",
    "semi_hard": "loss.semi_hard",
    "normalize": "loss.normalize",
    "temperature": "loss.temperature",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "lr_scaling": "optim.lr_scaling",
    "method": "method",
}
# A paper setting our settings do not give (no blur or autoaugment op spelled out; an experiment.json
# from before semi-hard mining existed): the plain default.
DEFAULTS = {"blur": False, "autoaugment": False, "semi_hard": False}


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
        value = values.get(key)
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


def _matches(ours: Any, theirs: Any) -> bool:
    """A paper setting left empty does not apply to that row; any other must equal ours."""
    if not isinstance(theirs, bool) and pd.isna(theirs):
        return True
    return ours is not None and _same(ours, theirs)


def compare_with_paper(agg: pd.DataFrame, exp: dict[str, Any], metric: str = PRIMARY_METRIC) -> pd.DataFrame | None:
    """Our mean (%) beside the paper's number for each label, then every paper row no label matched
    (with an empty label); None when exp["paper"] has no table.

    A series of the paper (e.g. SimCLR vs supervised) that our setup fixes picks its rows only; one
    that a swept key gives (a `method` axis) is matched per label and shown in its own column; any
    other gets its own paper column, "paper (<series>)" (e.g. "paper (Supervised)").
    """
    name = exp.get("paper")
    if name not in KEYS:
        return None
    fixed_settings = exp.get("fixed") or {}
    fixed = {c: v for c in SERIES[name] if (v := derive(c, {}, fixed_settings)) is not None}
    table = paper_table(name)
    table = table[[all(_same(v, t[c]) for c, v in fixed.items()) for _, t in table.iterrows()]]
    axes = [c for c in exp.get("swept") or [] if c in agg.columns]
    coords = [{a: r[a] for a in axes} for _, r in agg.iterrows()]
    per_row = [c for c in SERIES[name] if c not in fixed and SETTINGS[c] in axes]
    split = [c for c in SERIES[name] if c not in fixed and c not in per_row]

    def column(t: pd.Series) -> str:
        return " ".join(["paper"] + [f"({t[c]})" for c in split])

    rows, matched = [], set()
    for (_, r), co in zip(agg.iterrows(), coords):
        wanted = {c: derive(c, co, fixed_settings) for c in (*KEYS[name], *per_row)}
        row = {
            "label": r["label"],
            "setting": None,
            **dict.fromkeys(per_row),
            "ours": 100 * r[f"{metric}_mean"],
            "ours_std": 100 * r[f"{metric}_std"],
            "n": r["n"],
        }
        for i, t in table.iterrows():
            if all(_matches(v, t[c]) for c, v in wanted.items()):
                row.update({"setting": t["setting"], **{c: t[c] for c in per_row}, column(t): t["value"]})
                matched.add(i)
        rows.append(row)
    if name in TUNED:
        rows = _best_per_setting(rows)
    rows += [
        {
            "label": "",
            "setting": t["setting"],
            **{c: t[c] for c in per_row},
            "ours": math.nan,
            "ours_std": math.nan,
            "n": 0,
            column(t): t["value"],
        }
        for i, t in table.iterrows()
        if i not in matched
    ]
    return pd.DataFrame(rows)


def _best_per_setting(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the rows that match one paper setting, the one with our best mean (rows that match none stay)."""
    best: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = row["setting"] if row["setting"] is not None else id(row)
        if key not in best or row["ours"] > best[key]["ours"]:
            best[key] = row
    return list(best.values())


def spearman(a: pd.Series, b: pd.Series) -> tuple[float, int]:
    """Rank correlation over the pairs where both are known, and how many pairs that was.

    pandas' DataFrame.corr ranks and correlates itself (Series.corr would need scipy).
    """
    both = pd.DataFrame({"a": a.astype(float), "b": b.astype(float)}).dropna()
    if len(both) < 2:
        return math.nan, len(both)
    return float(both.corr(method="spearman").iloc[0, 1]), len(both)
