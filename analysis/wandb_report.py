"""The grid's report in Weights & Biases: once per `ablate report`, when the cells logged there (their
`log.wandb`) or WANDB_PROJECT is set. One run per experiment ("report", in the experiment's group) that
each report continues: the figures as images, the report page, the summary as a table. Like the cells'
logger it never fails what called it: an error prints one line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ablation import store
from ablation.loggers import run_id, wandb_run, wandb_wanted


def _log_sections(exp_dir: Path, ids: Iterable[object]) -> list[dict]:
    """The `log` section of each cell's resolved config (from its result.json)."""
    sections = []
    for cell_id in ids:
        with contextlib.suppress(store.Corrupt):
            sections.append(((store.read_result(exp_dir / str(cell_id)) or {}).get("config") or {}).get("log") or {})
    return sections


def log_report(exp_dir: Path, summary: pd.DataFrame, figures: list[Path], page: Path) -> None:
    sections = _log_sections(exp_dir, summary["id"])
    if not any(wandb_wanted(s) for s in [*sections, None]):
        return
    name = exp_dir.name
    project = next((s["wandb_project"] for s in sections if s.get("wandb_project")), None)
    try:
        import wandb

        run = wandb_run(run_id(name, "report"), name, "report", project, exp_dir, job_type="report")
        run.log(
            {
                **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures},
                "report": wandb.Html(page.read_text()),
                "summary": wandb.Table(dataframe=summary),
            }
        )
        run.finish()
    except Exception as err:  # noqa: BLE001 - W&B never stops a report
        print(f"W&B report: {type(err).__name__}: {err}; the report is written without it", file=sys.stderr)
