"""Frontier metrics on curves small enough to compute by hand."""

import pytest

from inference.metrics import (
    area_under_frontier,
    cost_for_gap_fraction,
    matches,
    pareto_frontier,
    speedup_at_matched_quality,
)


def test_matches_is_within_one_percent_of_the_target():
    assert matches(0.99, 1.0)
    assert not matches(0.989, 1.0)
    assert matches(0.5, 0.5)
    assert matches(0.6, 0.5)  # above the target matches too


def test_speedup_picks_the_cheapest_point_that_matches():
    # target quality 0.30: within 1% means >= 0.297.
    points = [(0.4, 0.20), (0.5, 0.297), (0.7, 0.31), (0.9, 0.30)]
    assert speedup_at_matched_quality(points, 0.30) == pytest.approx(2.0)


def test_speedup_is_none_when_nothing_matches():
    assert speedup_at_matched_quality([(0.4, 0.1), (0.6, 0.2)], 0.3) is None


def test_pareto_frontier_drops_dominated_points():
    points = [(0.5, 0.2), (0.3, 0.1), (0.6, 0.15), (0.8, 0.3), (0.3, 0.05)]
    assert pareto_frontier(points) == [(0.3, 0.1), (0.5, 0.2), (0.8, 0.3)]


def test_area_is_the_mean_of_the_step_frontier():
    # budgets [0.2, 1.0]: 0.1 on [0.2, 0.5), 0.2 on [0.5, 0.8), 0.3 on [0.8, 1.0]
    points = [(0.2, 0.1), (0.5, 0.2), (0.8, 0.3), (0.6, 0.15)]
    expected = (0.3 * 0.1 + 0.3 * 0.2 + 0.2 * 0.3) / 0.8
    assert area_under_frontier(points, 0.2, 1.0) == pytest.approx(expected)


def test_area_counts_budgets_below_the_cheapest_point_as_zero():
    assert area_under_frontier([(0.5, 1.0)], 0.0, 1.0) == pytest.approx(0.5)


def test_area_rejects_an_empty_range():
    with pytest.raises(ValueError):
        area_under_frontier([(0.5, 1.0)], 1.0, 1.0)


def test_gap_fraction_interpolates_between_neighbours():
    # drafter 0.1, target 0.3: 50% of the gap is 0.2, reached between (0.2, 0.15) and (0.4, 0.25).
    points = [(0.0, 0.1), (0.2, 0.15), (0.4, 0.25), (1.0, 0.3)]
    assert cost_for_gap_fraction(points, 0.1, 0.3, 0.5) == pytest.approx(0.3)
    # 80%: 0.26, between (0.4, 0.25) and (1.0, 0.3): 0.4 + 0.2 * 0.6
    assert cost_for_gap_fraction(points, 0.1, 0.3, 0.8) == pytest.approx(0.52)


def test_gap_fraction_edge_cases():
    assert cost_for_gap_fraction([(0.5, 0.2)], 0.3, 0.3, 0.5) == 0.0  # no gap to close
    assert cost_for_gap_fraction([(0.0, 0.1), (0.5, 0.12)], 0.1, 0.3, 0.5) is None  # never reached
    assert cost_for_gap_fraction([(0.3, 0.3)], 0.1, 0.3, 0.5) == pytest.approx(0.3)  # first point already there
    assert cost_for_gap_fraction([(0.0, 0.1), (0.6, 0.3), (0.2, 0.3)], 0.1, 0.3, 1.0) == pytest.approx(0.2)  # unsorted input


def test_paired_difference_of_identical_or_shifted_scores_is_exact():
    from inference.metrics import paired_difference

    scores = [0.1, 0.5, 0.3, 0.9]
    assert paired_difference(scores, scores) == (0.0, 0.0, 0.0)
    d, low, high = paired_difference([s + 0.25 for s in scores], scores)
    assert d == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference([0.1, 0.2], [0.1])


def test_paired_interval_covers_the_true_difference_at_its_level():
    """Coverage of the 95% interval over 300 simulated example sets (paired, correlated scores): the
    number of misses follows Binomial(300, 0.05) for a correct interval; 4-30 misses is a two-sided
    test at about 0.998, and the intervals halve when the examples quadruple."""
    import numpy as np

    from inference.metrics import paired_difference

    rng = np.random.default_rng(7)
    misses, widths = 0, {100: [], 400: []}
    for trial in range(300):
        n = 100 if trial % 2 else 400
        base = rng.uniform(0, 1, n)
        other = np.clip(base + rng.normal(-0.02, 0.1, n), -1, 2)  # true mean difference -0.02
        d, low, high = paired_difference(other, base, resamples=1000, seed=trial)
        misses += not (low <= -0.02 <= high)
        widths[n].append(high - low)
    assert 4 <= misses <= 30
    assert np.median(widths[100]) / np.median(widths[400]) == pytest.approx(2.0, rel=0.15)
