"""Shared fixtures: the real CIFAR-10 copy when ../shared has it."""
from __future__ import annotations

from pathlib import Path

import pytest

CIFAR_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg"


@pytest.fixture
def cifar_root() -> Path:
    if not (CIFAR_ROOT / "train").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_ROOT}")
    return CIFAR_ROOT
