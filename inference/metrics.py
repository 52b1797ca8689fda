"""Frontier metrics of a cost-quality sweep (pure functions on lists of numbers).

A curve is a list of (cost, quality) points, cost being relative latency (1 = target-only) or the
deferral rate. Higher quality is better, lower cost is better.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Point = tuple[float, float]  # (cost, quality)

MATCH_TOLERANCE = 0.01  # "matched target quality": within 1% of the target's score


def matches(quality: float, target_quality: float, tolerance: float = MATCH_TOLERANCE) -> bool:
    """True when `quality` is within `tolerance` (relative) of the target's, or above it."""
    return quality >= target_quality - tolerance * abs(target_quality)


def speedup_at_matched_quality(
    points: Sequence[Point], target_quality: float, tolerance: float = MATCH_TOLERANCE
) -> float | None:
    """1 / (lowest relative latency among points that match the target's quality); None if none does."""
    latencies = [cost for cost, quality in points if matches(quality, target_quality, tolerance)]
    if not latencies:
        return None
    best = min(latencies)
    return float("inf") if best <= 0 else 1.0 / best


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both axes, by increasing cost (and strictly increasing quality)."""
    frontier: list[Point] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or quality > frontier[-1][1]:
            frontier.append((cost, quality))
    return frontier


def area_under_frontier(points: Sequence[Point], low: float, high: float) -> float:
    """Mean over cost budgets x in [low, high] of the best quality reachable at cost <= x.

    The reachable quality is a step function of the budget (a deployment picks the best knob that
    fits); budgets below the cheapest point reach nothing and count as 0, so callers include the
    drafter-only point (any rule can fall back to it). Returns quality units (0..1 for pass@1).
    """
    if high <= low:
        raise ValueError(f"empty cost range [{low}, {high}]")
    frontier = pareto_frontier(points)
    area = 0.0
    for i, (cost, quality) in enumerate(frontier):
        start = max(cost, low)
        end = min(frontier[i + 1][0] if i + 1 < len(frontier) else high, high)
        if end > start:
            area += (end - start) * quality
    return area / (high - low)


def cost_for_gap_fraction(
    points: Sequence[Point], drafter_quality: float, target_quality: float, fraction: float
) -> float | None:
    """Lowest cost (e.g. deferral rate) at which the curve closes `fraction` of the drafter-to-target
    quality gap, interpolating linearly between consecutive points sorted by cost.

    Returns 0 when the drafter already matches the target, None when no point reaches the level.
    """
    gap = target_quality - drafter_quality
    if gap <= 0:
        return 0.0
    level = drafter_quality + fraction * gap
    ordered = sorted(points)
    for i, (cost, quality) in enumerate(ordered):
        if quality >= level:
            if i == 0:
                return cost
            prev_cost, prev_quality = ordered[i - 1]
            if quality == prev_quality:
                return cost
            t = (level - prev_quality) / (quality - prev_quality)
            return prev_cost + max(0.0, t) * (cost - prev_cost)
    return None


def paired_difference(
    scores: Sequence[float], reference: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of scores - reference over paired examples, with a percentile-bootstrap interval.

    Both sequences score the same examples in the same order (every rule decodes the same prompts), so
    the interval resamples examples, not rules: it is what the example set can resolve between the
    two. Returns (mean difference, low, high) at `level`; the interval is (d, d) for identical scores.
    """
    a, b = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equal, non-empty lists, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)  # (resamples,)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)
