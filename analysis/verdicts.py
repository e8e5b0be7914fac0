"""A finding is a comparison with an uncertainty: paired intervals over the shared test images, and the
three-way verdict a report gives (holds, within noise, reversed).

Each finished cell keeps, per test image, whether each probe classified it right (``store.CORRECT``).
Two settings are compared on the same test images, seed by seed (the same seed of two cells), so the
image-to-image variation that both share cancels (a paired test, as McNemar's). The interval of the
mean difference combines two sources of noise, in quadrature:

- test-image sampling: a paired bootstrap over the test images of the seed-averaged differences;
- training randomness: the spread of the per-seed differences (standard error over seeds), only when
  there are several seeds. With one seed the interval covers the test images alone, and says so.

Evidence for the thresholds (tests/test_verdicts.py): on 4,000 test images a 0.1-point difference is
within noise, a 5-point one is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation import store

HOLDS, WITHIN_NOISE, REVERSED, UNKNOWN = "holds", "within noise", "reversed", "cannot be checked"
VERDICTS = (HOLDS, WITHIN_NOISE, REVERSED)
LEVEL, Z = 0.95, 1.959964  # two-sided normal quantile of LEVEL
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A difference A - B in percentage points with its LEVEL interval; `seeds` paired replicates on
    `images` shared test images."""

    diff: float
    low: float
    high: float
    seeds: int
    images: int

    @property
    def verdict(self) -> str:
        """holds when the whole interval is above 0 (A better), reversed when below, else within noise."""
        return HOLDS if self.low > 0 else REVERSED if self.high < 0 else WITHIN_NOISE

    def text(self) -> str:
        sources = "test images and seeds" if self.seeds > 1 else "test images only (one seed)"
        return (
            f"{self.diff:+.1f} points, {LEVEL:.0%} CI [{self.low:+.1f}, {self.high:+.1f}] "
            f"({self.seeds} seed{'s' * (self.seeds > 1)} x {self.images:,} paired test images; {sources})"
        )


def paired_interval(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], seed: int = 0, resamples: int = RESAMPLES
) -> Interval:
    """The interval of mean(A) - mean(B) in points, from per-seed correctness on the same test images:
    ``a[s]`` and ``b[s]`` are vectors (bool, or fractions when a side averages several cells) of seed s."""
    if not a or len(a) != len(b):
        raise ValueError(
            f"paired_interval needs the same number (>= 1) of replicates on both sides, got {len(a)} and {len(b)}"
        )
    d = np.stack([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b)])  # (seeds, images)
    per_image, per_seed = d.mean(0), d.mean(1)
    rng = np.random.default_rng(seed)
    n = per_image.size
    means = np.concatenate(
        [per_image[rng.integers(0, n, (chunk, n))].mean(1) for chunk in _chunks(resamples, max(1, 2**22 // max(n, 1)))]
    )
    variance = means.var(ddof=1) + (per_seed.var(ddof=1) / len(per_seed) if len(per_seed) > 1 else 0.0)
    half = Z * math.sqrt(variance)
    diff = per_image.mean()
    return Interval(100 * diff, 100 * (diff - half), 100 * (diff + half), len(per_seed), n)


def _chunks(total: int, size: int) -> list[int]:
    """``total`` split into pieces of at most ``size`` (so a bootstrap's index block stays near 4M entries)."""
    return [min(size, total - i) for i in range(0, total, size)]


def read_correct(cell_dir: Path) -> dict[str, np.ndarray] | None:
    """A cell's per-image correctness ({probe: bool vector}); None for a cell finished before it was kept,
    or whose record cannot be read (the report then gives that finding without an interval)."""
    try:
        return store.read_correct(Path(cell_dir) / store.CORRECT)
    except store.Corrupt:
        return None


def point_verdict(diff: float) -> str:
    """The verdict of a difference without an interval (cells without per-image records): its sign only."""
    return HOLDS if diff > 0 else REVERSED if diff < 0 else WITHIN_NOISE
