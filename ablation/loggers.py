"""Where a cell's per-epoch rows go: metrics.jsonl always, TensorBoard when it is installed, Weights &
Biases when asked (`log.wandb=true` or WANDB_PROJECT set). One interface for the three, so another
back-end (MLflow, ...) is one more class in OPTIONAL.

metrics.jsonl is the record the analysis reads: its errors end the cell as before. An optional
back-end never does: an error in opening or writing it prints one line and the cell goes on without it.

Resuming: every back-end is told the epoch the cell resumes after (`done`) and the last epoch a previous
attempt wrote (`logged`, read from metrics.jsonl before it drops the rows after the checkpoint). The file
and TensorBoard replace what came after `done`; a W&B run, which cannot take an earlier step back,
continues after `logged` (the epochs between are trained again to the same numbers).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import store
from .config import CellConfig
from .identity import signature
from .names import EPOCH, FINISHED

if TYPE_CHECKING:
    import wandb
    from torch.utils.tensorboard import SummaryWriter

Groups = dict[str, dict[str, Any]]  # {"train": {"loss": ..}, "embedding": {..}, "probe": {..}}
DEFAULT_PROJECT = "ablation"


@dataclass(frozen=True)
class CellRun:
    """What a back-end needs to know of the cell it logs: its folder and config, and where it resumes."""

    cell_dir: Path
    cfg: CellConfig
    done: int  # epochs the checkpoint holds: rows after it are written again
    logged: int  # the last epoch a previous attempt logged (>= done)

    @classmethod
    def resuming(cls, cell_dir: Path, cfg: CellConfig, done: int) -> CellRun:
        """A cell that resumes after `done` epochs; what it logged before is read from metrics.jsonl."""
        logged = max((r[EPOCH] for r in store.read_metrics(cell_dir)), default=0)
        return cls(Path(cell_dir), cfg, done, max(done, logged))


class Logger:
    """One back-end of the per-epoch rows. `epoch` gets the row as metrics.jsonl holds it and the same
    values by group; `finish` the cell's result.json at its end; `close` releases what it holds."""

    required = False  # an error of a required back-end ends the cell; of another, only the back-end

    def epoch(self, row: dict, groups: Groups) -> None:
        raise NotImplementedError

    def finish(self, result: dict) -> None:
        """The cell ended with this result (default: nothing more to write)."""

    def close(self) -> None:
        """Nothing held (default)."""


class MetricsFile(Logger):
    """metrics.jsonl: exactly one row per trained epoch whatever interrupted the cell."""

    required = True

    def __init__(self, run: CellRun):
        self.cell_dir = run.cell_dir
        self.rows = [r for r in store.read_metrics(run.cell_dir) if r[EPOCH] <= run.done]
        store.write_metrics(run.cell_dir, self.rows)

    def epoch(self, row: dict, groups: Groups) -> None:
        self.rows.append(row)
        store.write_metrics(self.cell_dir, self.rows)


class TensorBoard(Logger):
    """One TensorBoard run per cell (store.tensorboard_dir); `purge_step` hides the events a previous
    attempt logged after the checkpoint this run resumes from."""

    @classmethod
    def open(cls, run: CellRun) -> TensorBoard | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return cls(SummaryWriter(str(store.tensorboard_dir(run.cell_dir)), purge_step=run.done + 1))

    def __init__(self, writer: SummaryWriter):
        self.writer = writer

    def epoch(self, row: dict, groups: Groups) -> None:
        for group, values in groups.items():
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(f"{group}/{key}", value, row[EPOCH])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_wanted(log: dict | None) -> bool:
    """Whether W&B logging is asked for, by a config's `log` section (as a dict) or WANDB_PROJECT."""
    return bool((log or {}).get("wandb")) or bool(os.environ.get("WANDB_PROJECT"))


def wandb_run(run_id: str, group: str, name: str, project: str | None, folder: Path, **fields: Any) -> wandb.Run:
    """A W&B run that a later call with the same id continues (resume="allow"), its files under `folder`
    unless WANDB_DIR says where; ImportError without the package."""
    import wandb

    return wandb.init(
        id=run_id,
        resume="allow",
        group=group,
        name=name,
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        dir=None if os.environ.get("WANDB_DIR") else str(folder),
        reinit="create_new",
        settings=wandb.Settings(console="off"),
        **fields,
    )


def run_id(name: str, suffix: str) -> str:
    """A W&B run id from stable parts: the same cell (or report) always continues the same run."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', name)[:48]}-{suffix}"


class WandB(Logger):
    """One W&B run per cell, its id derived from the experiment and the cell id so a resumed or requeued
    cell continues it; grouped by experiment, named by the cell's label, its coordinates and swept settings
    as config and tags, the rows as metrics at step = epoch, the final metrics as summary."""

    @classmethod
    def open(cls, run: CellRun) -> WandB | None:
        if not wandb_wanted({"wandb": run.cfg.log.wandb}):
            return None
        cell = store.read_record(run.cell_dir / store.CELL) or {}
        cell_id = cell.get("id") or signature(run.cfg)
        experiment = cell.get("experiment") or run.cell_dir.name
        exp = (store.read_record(run.cell_dir.parent / store.EXPERIMENT) or {}) if "experiment" in cell else {}
        swept = {**(cell.get("coords") or {}), **(exp.get("settings") or {}).get(cell_id, {})}
        tags = list(dict.fromkeys(f"{key.split('.')[-1]}={value}"[:64] for key, value in swept.items()))
        handle = wandb_run(
            run_id(experiment, cell_id),
            experiment,
            cell.get("label") or run.cell_dir.name,
            run.cfg.log.wandb_project,
            run.cell_dir,
            job_type="cell",
            tags=tags,
            config={**swept, "cell_id": cell_id, "seed": run.cfg.train.seed, "resolved": run.cfg.to_dict()},
        )
        return cls(handle, run.logged)

    def __init__(self, handle: wandb.Run, logged: int):
        self.run, self.logged = handle, logged
        self.exit_code = 1  # a run closed before the cell's result (interrupted) did not finish

    def epoch(self, row: dict, groups: Groups) -> None:
        if row[EPOCH] <= self.logged:  # already in the run: a step is never taken back
            return
        values = {f"{group}/{key}": v for group, part in groups.items() for key, v in part.items() if v is not None}
        self.run.log({**values, EPOCH: row[EPOCH]}, step=row[EPOCH])

    def finish(self, result: dict) -> None:
        metrics = result.get("metrics") or {}
        self.run.summary.update(
            {
                "status": result.get("status"),
                "epochs_done": result.get("epochs_done"),
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            }
        )
        self.exit_code = 0 if result.get("status") == FINISHED else 1

    def close(self) -> None:
        self.run.finish(exit_code=self.exit_code)


OPTIONAL: tuple[Callable[[CellRun], Logger | None], ...] = (TensorBoard.open, WandB.open)


def _warn(name: str, err: BaseException) -> None:
    print(f"{name}: {type(err).__name__}: {err}; the cell goes on without it", file=sys.stderr, flush=True)


class Loggers:
    """The back-ends of one cell, called together; an optional one that fails is dropped with one line."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def _each(self, call: Callable[[Logger], None]) -> None:
        for logger in list(self.loggers):
            if logger.required:
                call(logger)
                continue
            try:
                call(logger)
            except Exception as err:  # noqa: BLE001 - an optional back-end never fails a cell
                _warn(type(logger).__name__, err)
                self.loggers.remove(logger)

    def epoch(self, row: dict, groups: Groups) -> None:
        self._each(lambda logger: logger.epoch(row, groups))

    def finish(self, result: dict) -> dict:
        """Hand the result to every back-end and close them; returns the result."""
        self._each(lambda logger: logger.finish(result))
        self.close()
        return result

    def close(self) -> None:
        self._each(lambda logger: logger.close())
        self.loggers = []


def open_loggers(cell_dir: Path, cfg: CellConfig, done: int) -> Loggers:
    """metrics.jsonl and every optional back-end that is installed and asked for, for a cell that resumes
    after `done` epochs."""
    run = CellRun.resuming(cell_dir, cfg, done)
    loggers: list[Logger] = [MetricsFile(run)]
    for opener in OPTIONAL:
        try:
            logger = opener(run)
        except Exception as err:  # noqa: BLE001 - an optional back-end never fails a cell
            _warn(getattr(opener, "__qualname__", "logger").split(".")[0], err)
            continue
        if logger is not None:
            loggers.append(logger)
    return Loggers(loggers)
