"""results/<exp>/report.md: setup, summary table, figures, and how the results compare with the paper.

For the Figure 5 grid the paper gives no numbers, only findings in its text; each is checked as a
comparison with a paired interval over the test images (and seeds) and marked "holds", "within noise",
"reversed" or "cannot be checked" (missing cells); see analysis/verdicts.py. Product ablations with a
published table get the numbers side by side and a Spearman rank correlation: on a small data set
and model only the ordering of settings can be expected to carry over, not the values.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablation import store
from ablation.names import ACCURACIES, FINAL_LOSS, FINISHED, LBFGS, ONLINE, RANDOM_INIT_TOP1, SGD, pair_spec
from ablation.names import PAPER_TABLES as SOURCES

from .classes import class_change
from .figures import heatmap_matrix, plot
from .html import write_html
from .paper import SERIES, TUNED, compare_with_paper, spearman
from .sensitivity import report_lines as sensitivity_lines
from .table import (
    PROTOCOL_KEY,
    collect,
    facet_groups,
    load_experiment,
    load_summary,
    markdown_table,
    per_class,
    setup_line,
)
from .verdicts import UNKNOWN, Interval, paired_interval, point_verdict, read_correct
from .wandb_report import log_report

# Fixed settings the setup section names after its first lines (a swept one is in the table instead).
SETUP_KEYS = ("method", "data.size", "augment.views", "loss.name", "optim.lr_scaling")
CLASSES_IN_TABLE = 20
FIGURE8_TEXT = (
    "The paper gives Figure 8 only as an image; its text says a nonlinear head beats a "
    "linear one by about 3 points and no head by more than 10 points."
)
Cell = tuple[str, str]  # (first op, second op) of a pairwise grid
PROTOCOLS_TEXT = {
    LBFGS: "full-batch L-BFGS on standardised features of un-augmented images; not the paper's protocol",
    SGD: "the paper's Appendix B.6: Nesterov SGD on features of cropped and flipped images",
    ONLINE: "a linear head trained alongside pretraining on detached features, as the paper's reference code",
}


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    verdict: str
    detail: str

    def line(self) -> str:
        return f"- ({self.key}) {self.claim}: **{self.verdict}**; {self.detail}"


class Replicates:
    """The per-seed, per-test-image correctness of a pairwise grid's finished cells, read once."""

    def __init__(self, summary: pd.DataFrame, exp_dir: Path | None) -> None:
        done = summary[summary["status"] == FINISHED]
        self.records = (
            {}
            if exp_dir is None
            else {(r.first, r.second, r.seed): read_correct(exp_dir / str(r.id)) for r in done.itertuples()}
        )
        self.seeds = sorted(done["seed"].unique().tolist())

    def compare(
        self, a: list[Cell], b: list[Cell], probe_a: str = "linear", probe_b: str = "linear"
    ) -> Interval | None:
        """The paired interval of mean(cells a) - mean(cells b), on the seeds where every cell of both has a
        per-image record; None where none does (cells finished before the records were kept)."""
        sides: list[list[np.ndarray]] = [[], []]
        for seed in self.seeds:
            found = [[self.records.get((*cell, seed)) for cell in cells] for cells in (a, b)]
            if all(r is not None and probe in r for side, probe in zip(found, (probe_a, probe_b)) for r in side):
                for out, side, probe in zip(sides, found, (probe_a, probe_b)):
                    out.append(np.mean([r[probe] for r in side if r is not None], axis=0))
        return paired_interval(sides[0], sides[1]) if sides[0] else None


def _judged(claim: Finding, interval: Interval | None, diff: float, what: str) -> Finding:
    """The finding with its verdict: from the interval of `what` (A - B), or from the sign of `diff` alone
    where the cells kept no per-image record."""
    if interval is None:
        return Finding(
            claim.key,
            claim.claim,
            point_verdict(diff),
            f"{claim.detail}; {what}: {diff:+.1f} points (no interval: these cells finished before "
            f"per-image records were kept)",
        )
    return Finding(claim.key, claim.claim, interval.verdict, f"{claim.detail}; {what}: {interval.text()}")


def _best_is_crop_color(cells: pd.DataFrame, pair: dict[Cell, float], rep: Replicates) -> Finding:
    claim = "the best cell is a crop+color composition (either order)"
    known = cells.stack().dropna()
    found = {k: v for k, v in pair.items() if not math.isnan(v)}
    if not found:
        return Finding("a", claim, UNKNOWN, "no crop+color or color+crop result")
    others = known.drop([k for k in found if k in known.index])
    best_pair = max(found, key=lambda k: found[k])
    best = pair_spec(*known.idxmax())
    detail = f"best: {best} at {known.max():.1f}% ({len(known)} of {cells.size} cells)"
    if others.empty:
        return Finding("a", claim, UNKNOWN, f"{detail}; no other cell to compare with")
    rival = others.idxmax()
    return _judged(
        Finding("a", claim, "", detail),
        rep.compare([best_pair], [rival]),
        found[best_pair] - others.max(),
        f"{pair_spec(*best_pair)} - {pair_spec(*rival)}",
    )


def _diagonal_below_off(cells: pd.DataFrame, rep: Replicates) -> Finding:
    claim = "single transformations (diagonal) average below compositions (off-diagonal)"
    eye: np.ndarray = np.eye(len(cells), dtype=bool)
    diagonal = cells.where(eye).stack().dropna()
    off = cells.where(~eye).stack().dropna()
    if diagonal.empty or off.empty:
        return Finding("b", claim, UNKNOWN, "needs at least one diagonal and one off-diagonal cell")
    detail = f"diagonal mean {diagonal.mean():.1f}% vs off-diagonal mean {off.mean():.1f}%"
    return _judged(
        Finding("b", claim, "", detail),
        rep.compare(list(off.index), list(diagonal.index)),
        off.mean() - diagonal.mean(),
        "off-diagonal - diagonal",
    )


def _pairs_beat_singles(pair: dict[Cell, float], alone: dict[Cell, float], rep: Replicates) -> Finding:
    claim = "crop+color and color+crop both beat crop alone and color alone"
    values = {**pair, **alone}
    missing = [pair_spec(*k) for k, v in values.items() if math.isnan(v)]
    if missing:
        return Finding("c", claim, UNKNOWN, f"missing: {', '.join(missing)}")
    weaker, stronger = min(pair, key=lambda k: pair[k]), max(alone, key=lambda k: alone[k])
    detail = ", ".join(f"{pair_spec(*k)} {v:.1f}%" for k, v in values.items())
    return _judged(
        Finding("c", claim, "", detail),
        rep.compare([weaker], [stronger]),
        pair[weaker] - alone[stronger],
        f"weaker composition - stronger single, {pair_spec(*weaker)} - {pair_spec(*stronger)}",
    )


def _best_beats_random(cells: pd.DataFrame, random_init: float, rep: Replicates) -> Finding:
    claim = "the best cell beats the random-init encoder probe"
    known = cells.stack().dropna()
    if known.empty or math.isnan(random_init):
        return Finding("d", claim, UNKNOWN, "no finished cell with a random-init probe")
    best = known.idxmax()
    detail = f"{known.max():.1f}% vs {random_init:.1f}% (random init, mean over cells)"
    return _judged(
        Finding("d", claim, "", detail),
        rep.compare([best], [best], "linear", "random_init"),
        known.max() - random_init,
        f"{pair_spec(*best)} - its random-init encoder",
    )


def _op_named(ops: list[str], name: str) -> str | None:
    """The grid op that is `name`, with or without parameters ("color(s=0.5)" is color)."""
    return next((op for op in ops if op.split("(")[0].strip() == name), None)


def pairwise_findings(summary: pd.DataFrame, ops: list[str], exp_dir: Path | None = None) -> list[Finding]:
    """The paper's Section 3.1 findings, checked on our grid (values in % linear top-1), each with a paired
    interval where the cells in `exp_dir` kept per-image records (analysis/verdicts.py)."""
    cells = heatmap_matrix(summary, ops)[ops]
    crop, color = _op_named(ops, "crop") or "crop", _op_named(ops, "color") or "color"

    def get(first: str, second: str) -> float:
        return cells.loc[first, second] if first in cells.index and second in cells.columns else math.nan

    pair = {(crop, color): get(crop, color), (color, crop): get(color, crop)}
    alone = {(crop, crop): get(crop, crop), (color, color): get(color, color)}
    random_init = 100 * summary.loc[summary["status"] == FINISHED, RANDOM_INIT_TOP1].mean()
    rep = Replicates(summary, exp_dir)
    return [
        _best_is_crop_color(cells, pair, rep),
        _diagonal_below_off(cells, rep),
        _pairs_beat_singles(pair, alone, rep),
        _best_beats_random(cells, random_init, rep),
    ]


def _pct(mean: float, std: float, digits: int = 1) -> str:
    """ "45.3 ± 1.2", or just the mean for a single replicate, or "" when nothing finished."""
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def results_table(agg: pd.DataFrame, coords: list[str]) -> str:
    """label, coords, n, then each metric as mean ± std (percent for accuracies)."""
    shown = agg[["label"] + [c for c in coords if c not in ("first", "second")]].copy()
    shown["n"] = agg["n"].astype(str) + "/" + agg["cells"].astype(str)
    for m in ACCURACIES:
        shown[f"{m} (%)"] = [_pct(100 * a, 100 * b) for a, b in zip(agg[f"{m}_mean"], agg[f"{m}_std"])]
    shown[FINAL_LOSS] = [_pct(a, b, 3) for a, b in zip(agg[f"{FINAL_LOSS}_mean"], agg[f"{FINAL_LOSS}_std"])]
    return markdown_table(shown)


def _setup(exp: dict[str, Any], summary: pd.DataFrame, exp_dir: Path) -> list[str]:
    fixed = exp.get("fixed") or {}

    def value(key: str) -> Any:
        return fixed.get(key, "swept")

    counts = summary["status"].value_counts()
    lines = [
        f"- data set: {value('data.name')}; model: {value('model.encoder')}; "
        f"pretraining epochs: {value('train.epochs')}; batch size: {value('train.batch_size')}",
        f"- view mode: {value('augment.mode')} (asymmetric: the targeted transformations "
        f"on one branch only); base applied to both branches: {value('augment.base')}",
        f"- protocol: linear evaluation of the frozen encoder (top-1, top-5) by the {_protocol(exp)}, kNN "
        "top-1, and a linear probe of the random-init encoder as a floor (lbfgs for online cells)",
        f"- paper counterpart: {SOURCES.get(exp.get('paper') or '', 'none')}",
        f"- cells: {len(summary)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
    ]
    lines += [f"- {k}: {fixed[k]}" for k in SETUP_KEYS if k in fixed]
    result = next(
        (r for r in map(_result, (exp_dir / str(i) for i in summary["id"])) if r and r.get("status") == FINISHED), None
    )
    if result:
        versions = ", ".join(f"{k} {v}" for k, v in (result.get("versions") or {}).items())
        lines.append(f"- device: {result.get('device', '?')}; versions: {versions or '?'}")
    return lines


def _protocol(exp: dict[str, Any]) -> str:
    """The linear protocol in words (PROTOCOLS_TEXT), or that it was swept."""
    if PROTOCOL_KEY in (exp.get("swept") or []):
        return "protocol of each cell (eval.linear is swept)"
    name = (exp.get("fixed") or {}).get(PROTOCOL_KEY, LBFGS)
    return f"{name} protocol ({PROTOCOLS_TEXT.get(name, '?')})"


def _result(cell_dir: Path) -> dict | None:
    with contextlib.suppress(store.Corrupt):  # a corrupt cell is listed under the results already
        return store.read_result(cell_dir)
    return None


def _problems(summary: pd.DataFrame) -> list[str]:
    rows = summary[summary["status"] != FINISHED]
    return [
        f"- `{r.id}` ({r.label}, seed {r.seed}): {r.status}"
        + (f": {r.reason}" if isinstance(r.reason, str) and r.reason else "")
        for r in rows.itertuples()
    ]


def _comparison(exp: dict[str, Any], summary: pd.DataFrame, agg: pd.DataFrame, exp_dir: Path) -> list[str]:
    paper = str(exp.get("paper") or "")
    if exp.get("kind") == "pairwise":
        lines = [
            f"The paper gives {SOURCES.get(paper, 'Figure 5')} only as an image, so its stated "
            "findings are checked instead of its numbers:",
            "",
        ]
        for facet, part in facet_groups(summary, exp):
            lines += [f"{facet}:", ""] if facet else []
            lines += [f.line() for f in pairwise_findings(part, list(exp["ops"]), exp_dir)] + ([""] if facet else [])
        return lines
    if paper == "figure8":
        return [FIGURE8_TEXT]
    side = compare_with_paper(agg, exp)
    if side is None:
        return ["No published numbers for this experiment."]
    papers = [c for c in side.columns if c.startswith("paper")]
    if not papers:
        return [f"No label of this experiment matches a setting of {SOURCES[paper]}."]
    lines = [
        f"Paper numbers: {SOURCES[paper]}, ImageNet, ResNet-50, linear evaluation top-1 (%)."
        + (f" Ours: {TUNED[paper]}." if paper in TUNED else ""),
        "",
    ]
    shown = side.assign(ours=[_pct(a, b) for a, b in zip(side["ours"], side["ours_std"])])
    lines += [markdown_table(shown.drop(columns="ours_std").rename(columns={"ours": "ours (%)"})), ""]
    series = [c for c in SERIES[paper] if c in side.columns]  # swept ones; the others are fixed or paper columns
    for col in papers:
        for key, part in side.groupby(series, sort=False) if series else [((), side)]:
            rho, n = spearman(part["ours"], part[col])
            value = "n/a" if math.isnan(rho) else f"{rho:.2f}"
            where = f" ({', '.join(map(str, key))})" if series else ""
            lines.append(f"- Spearman rank correlation, ours vs {col}{where}: {value} over {n} settings")
    return lines


def _per_class_table(summary: pd.DataFrame, reference: str | None) -> list[str]:
    """Per-class linear top-1 (%) of every cell, when the cells recorded it and the classes fit a page."""
    table = per_class(summary)
    if table.empty or table.shape[1] > CLASSES_IN_TABLE:
        return []
    _, reference = class_change(summary, reference)
    return [
        f"Per-class linear top-1 (%), mean over seeds (figure `classes`: each cell's change against `{reference}`):",
        "",
        markdown_table(table.round(1).reset_index()),
        "",
    ]


def report(exp_dir: str | Path, reference: str | None = None) -> Path:
    """Collect, plot, and write results/<exp>/report.md (figures linked relatively) and report.html (the
    same, figures inline); `reference` is the label the per-class figure compares with."""
    exp_dir = Path(exp_dir)
    exp = load_experiment(exp_dir)
    collect(exp_dir)
    figures = [p for p in plot(exp_dir, reference) if p.suffix == ".png"]
    summary, agg = load_summary(exp_dir)
    coords = list(agg.columns[1 : agg.columns.get_loc("n")])  # label, coords..., n, stats
    text = [
        f"# {exp.get('title') or exp.get('name', exp_dir.name)}",
        "",
        f"Experiment `{exp.get('name', exp_dir.name)}` ({exp.get('kind', '?')}): {setup_line(exp)}.",
        "",
        "## Setup",
        "",
        *_setup(exp, summary, exp_dir),
        "",
        "## Results",
        "",
        "Mean ± std over seeds; n = finished replicates / cells.",
        "",
        results_table(agg, coords),
        "",
        *_per_class_table(summary, reference),
    ]
    problems = _problems(summary)
    if problems:
        text += ["Cells without a result:", "", *problems, ""]
    text += ["## Figures", ""]
    text += [
        f"![{p.stem}]({store.FIGURES}/{p.name}) ([PDF]({store.FIGURES}/{p.with_suffix('.pdf').name}))" for p in figures
    ]
    text += ["", *sensitivity_lines(summary, exp)]
    text += ["## Comparison with the paper", "", *_comparison(exp, summary, agg, exp_dir), ""]
    path = store.atomic_write(exp_dir / store.REPORT, lambda f: f.write("\n".join(text)))
    log_report(exp_dir, summary, figures, write_html(path))
    return path
