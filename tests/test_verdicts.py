"""analysis.verdicts: paired intervals of made-up correctness vectors with a known difference."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.verdicts import HOLDS, REVERSED, WITHIN_NOISE, paired_interval

N = 4000


def pair(acc_a: float, acc_b: float, seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Two independent correctness vectors on n images with exactly these accuracies."""
    rng = np.random.default_rng(seed)
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[rng.permutation(n)[: round(acc_a * n)]] = True
    b[rng.permutation(n)[: round(acc_b * n)]] = True
    return a, b


@pytest.mark.parametrize("seeds", [1, 3])
def test_a_tenth_of_a_point_on_4000_images_is_within_noise(seeds: int) -> None:
    sides = [pair(0.501, 0.500, s) for s in range(seeds)]
    interval = paired_interval([a for a, _ in sides], [b for _, b in sides])
    assert interval.diff == pytest.approx(0.1)
    assert interval.verdict == WITHIN_NOISE and interval.low < 0 < interval.high


@pytest.mark.parametrize("seeds", [1, 3])
def test_five_points_on_4000_images_holds_and_reversed_sides_reverse(seeds: int) -> None:
    sides = [pair(0.55, 0.50, s) for s in range(seeds)]
    a, b = [x for x, _ in sides], [y for _, y in sides]
    forward, backward = paired_interval(a, b), paired_interval(b, a)
    assert forward.diff == pytest.approx(5.0) and forward.verdict == HOLDS
    assert backward.verdict == REVERSED and backward.low == pytest.approx(-forward.high)


def test_interval_width_matches_the_binomial_standard_error() -> None:
    """Independent errors at 50% accuracy: the difference's standard error is sqrt(2 * 0.25 / N)."""
    a, b = pair(0.5, 0.5, 0)
    interval = paired_interval([a], [b])
    expected = 100 * 1.96 * np.sqrt(2 * 0.25 / N)
    assert (interval.high - interval.low) / 2 == pytest.approx(expected, rel=0.1)


def test_pairing_removes_shared_noise() -> None:
    """Two cells right on the same images but 40 (1%): a paired interval is far narrower than the unpaired
    binomial one (about +-2.2 points here), and the 1-point difference holds."""
    a = np.arange(N) < 2040
    b = np.arange(N) < 2000
    interval = paired_interval([a], [b])
    assert interval.verdict == HOLDS and interval.high - interval.low < 0.8


def test_seed_spread_widens_the_interval() -> None:
    """Seeds that disagree (one +3, one -1 points) give an interval wider than either seed's alone."""
    up, down = pair(0.53, 0.50, 0), pair(0.49, 0.50, 1)
    both = paired_interval([up[0], down[0]], [up[1], down[1]])
    alone = paired_interval([up[0]], [up[1]])
    assert both.verdict == WITHIN_NOISE and both.high - both.low > alone.high - alone.low


def test_mismatched_replicates_are_an_error() -> None:
    a, b = pair(0.5, 0.5, 0)
    with pytest.raises(ValueError, match="same number"):
        paired_interval([a, a], [b])
