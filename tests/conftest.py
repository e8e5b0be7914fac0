"""Shared fixtures: the real CIFAR-10 copy when ../shared has it; the fast lane's guard against whole cells."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ablation.cell

CIFAR_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg"
SLOW_LANE = ("slow", "slurm")  # the marks `pytest -m "not slurm and not slow"` leaves out

_running: list[pytest.Item] = []  # the test being run, for the guard


@pytest.fixture
def cifar_root() -> Path:
    if not (CIFAR_ROOT / "train").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_ROOT}")
    return CIFAR_ROOT


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Remember the running test: its module-scoped fixtures run cells too, before any of its own fixtures."""
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _refuse_in_fast_lane() -> None:
    test = _running[-1] if _running else None
    if test is not None and not any(test.get_closest_marker(mark) for mark in SLOW_LANE):
        pytest.fail(
            f"{test.nodeid} ran a whole cell (ablation.cell.run_cell trained it) but is not marked "
            "@pytest.mark.slow: mark it, or test the behaviour without training a cell, so that the "
            "fast lane stays fast",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def whole_cells_only_in_the_slow_lane() -> Iterator[None]:
    """A test outside the slow lane whose cell trained fails. A cell that stops on an error before it
    returns (a bad folder, a held output folder) costs milliseconds and stays allowed; a result returned
    or a preemption means the cell trained. Every module that imported `run_cell` by name gets the guarded
    one (cells run in other processes are not seen: the tests that start processes are marked slow)."""
    original = ablation.cell.run_cell

    def guarded(*args: Any, **kwargs: Any) -> dict:
        try:
            result = original(*args, **kwargs)
        except ablation.cell.Preempted:
            _refuse_in_fast_lane()
            raise
        _refuse_in_fast_lane()
        return result

    with pytest.MonkeyPatch.context() as patch:
        for module in list(sys.modules.values()):
            if getattr(module, "__dict__", {}).get("run_cell") is original:
                patch.setattr(module, "run_cell", guarded)
        yield
