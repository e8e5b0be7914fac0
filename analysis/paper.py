"""The paper's published numbers (only those in shared/paper/simclr-facts.md) and matching ours to them.

paper_numbers.csv is long format: one row per published number, with the table it comes from,
the setting that produced it (typed columns, empty where the table does not vary them or where a
setting does not apply: AutoAugment has no colour strength) and the value in top-1 % (linear
evaluation, ImageNet, ResNet-50). Figure 5 and Figure 8 are images in the paper, so none of their
values are here.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.errors import choices_error

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
# How our config keys (dotted; matched on the key or its last parts) name the paper's settings.
ALIASES = {
    "strength": ("strength", "color_strength", "colour_strength", "color.s"),
    "blur": ("blur",),
    "autoaugment": ("autoaugment",),
    "loss": ("loss", "loss.name", "loss.kind", "loss_name"),
    "semi_hard": ("semi_hard", "semihard"),
    "normalize": ("normalize", "l2_norm", "l2_normalize", "normalise"),
    "temperature": ("temperature", "tau"),
    "batch_size": ("batch_size",),
    "epochs": ("epochs",),
    "lr_scaling": ("lr_scaling", "scaling"),
    "method": ("method",),
}
# A setting our config does not name is taken as the plain SimCLR default.
DEFAULTS = {"blur": False, "autoaugment": False, "semi_hard": False}
SPEC_SETTINGS = ("strength", "blur", "autoaugment")  # also read from augmentation spec strings


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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _lookup(column: str, values: dict[str, Any]) -> Any:
    """The value of the key naming this paper setting (exact name before dotted suffix), or None."""
    for suffix in (False, True):
        for alias in ALIASES[column]:
            for key, value in values.items():
                if key == alias or (suffix and key.endswith("." + alias)):
                    return value
    return None


def _from_spec(column: str, values: dict[str, Any]) -> Any:
    """Colour strength / blur / AutoAugment read from an augmentation spec like "crop+color(s=0.5)+blur"."""
    for value in values.values():
        if column == "autoaugment" and isinstance(value, str) and "autoaugment" in value:
            return True
        if isinstance(value, str) and "color" in value:
            if column == "blur":
                return "blur" in value
            found = re.search(r"color\([^)]*\bs=([0-9.eE+-]+)", value)
            if column == "strength" and found:
                return float(found.group(1))
    return None


def derive(column: str, coords: dict[str, Any], setup: dict[str, Any]) -> Any:
    """Our value for a paper setting: from the cell's coords first, then the fixed setup."""
    for values in (coords, _flatten(setup)):
        found = _lookup(column, values)
        if found is None and column in SPEC_SETTINGS:
            found = _from_spec(column, values)
        if found is not None:
            return found
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


def compare_with_paper(agg: pd.DataFrame, exp: dict[str, Any],
                       metric: str = "linear_top1") -> pd.DataFrame | None:
    """Our mean (%) beside the paper's number for each label, then every paper row no label matched
    (with an empty label); None when exp["paper"] has no table.

    A series of the paper (e.g. SimCLR vs supervised) that our setup fixes picks its rows only; one
    that a swept key gives (a `method` axis) is matched per label and shown in its own column; any
    other gets its own paper column, "paper (<series>)" (e.g. "paper (Supervised)").
    """
    name = exp.get("paper")
    if name not in KEYS:
        return None
    setup = exp.get("setup") or {}
    fixed = {c: v for c in SERIES[name] if (v := derive(c, {}, setup)) is not None}
    table = paper_table(name)
    table = table[[all(_same(v, t[c]) for c, v in fixed.items()) for _, t in table.iterrows()]]
    axes = [c for c in exp.get("axes") or [] if c in agg.columns]
    coords = [{a: r[a] for a in axes} for _, r in agg.iterrows()]
    per_row = [c for c in SERIES[name] if c not in fixed and any(_lookup(c, co) is not None for co in coords)]
    split = [c for c in SERIES[name] if c not in fixed and c not in per_row]

    def column(t: pd.Series) -> str:
        return " ".join(["paper"] + [f"({t[c]})" for c in split])

    rows, matched = [], set()
    for (_, r), co in zip(agg.iterrows(), coords):
        wanted = {c: derive(c, co, setup) for c in (*KEYS[name], *per_row)}
        row = {"label": r["label"], "setting": None, **{c: None for c in per_row},
               "ours": 100 * r[f"{metric}_mean"], "ours_std": 100 * r[f"{metric}_std"], "n": r["n"]}
        for i, t in table.iterrows():
            if all(_matches(v, t[c]) for c, v in wanted.items()):
                row.update({"setting": t["setting"], **{c: t[c] for c in per_row}, column(t): t["value"]})
                matched.add(i)
        rows.append(row)
    rows += [{"label": "", "setting": t["setting"], **{c: t[c] for c in per_row}, "ours": math.nan,
              "ours_std": math.nan, "n": 0, column(t): t["value"]}
             for i, t in table.iterrows() if i not in matched]
    return pd.DataFrame(rows)


def spearman(a: pd.Series, b: pd.Series) -> tuple[float, int]:
    """Rank correlation over the pairs where both are known, and how many pairs that was.

    pandas' DataFrame.corr ranks and correlates itself (Series.corr would need scipy).
    """
    both = pd.DataFrame({"a": a.astype(float), "b": b.astype(float)}).dropna()
    if len(both) < 2:
        return math.nan, len(both)
    return float(both.corr(method="spearman").iloc[0, 1]), len(both)
