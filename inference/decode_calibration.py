"""Calibrate the learned rule's threshold on the cascade's own decoding.

A router's stored table maps a deferral rate to a threshold over logged positions. Decoding sees
other positions: after the first rejection in a block nothing more is examined, and once the
cascade keeps a drafted token the text (and so every later position) is the cascade's own, not the
logged one. So a rate requested from the log table can decode at another rate (0.2 -> 0.10 for the
shipped router). Here the rate is measured where it is used: decode calibration prompts at a few
thresholds, read the decoded rate (deferred / examined positions, as `deferral evaluate` reports
it), and refine the thresholds by interpolating between measurements (or stepping past the measured
range) until every requested rate has a measurement close to it.

No file I/O here: `decode_at` is given by the caller (inference.calibrate_cli), which also keeps the
measurements on disk for resuming.
"""

from __future__ import annotations

from typing import Callable, Iterable

from deferral.calibration import decoded_rate_range, decoded_rate_table, threshold_for_decoded_rate
from inference.config import Generation

# Two thresholds closer than this decode alike for every practical router: measuring both is waste.
SAME_THRESHOLD = 1e-6


def decoded_rate(generations: Iterable[Generation]) -> tuple[float, int]:
    """(deferred / examined positions, examined positions) over a decode's generations."""
    deferred = examined = 0
    for g in generations:
        deferred += g.stats.deferred
        examined += g.stats.examined
    return (deferred / examined if examined else 0.0), examined


def next_thresholds(measured: list[dict], rates: list[float]) -> list[float]:
    """Where to decode next so each requested rate gets a measurement near it.

    Inside the measured range: the interpolated threshold. Outside it: a step beyond the end
    threshold, as wide as the measured thresholds' spread (at least 0.05), to bracket the rate.
    """
    table = decoded_rate_table(measured)
    low_rate, high_rate = decoded_rate_range(table)
    thresholds = [r["threshold"] for r in table["rows"]]
    step = max(max(thresholds) - min(thresholds), 0.05)
    wanted = []
    for rate in rates:
        if rate < low_rate:  # defers too much everywhere measured: raise the threshold
            wanted.append(max(thresholds) + step)
        elif rate > high_rate:  # defers too little: lower it
            wanted.append(min(thresholds) - step)
        else:
            wanted.append(threshold_for_decoded_rate(table, rate))
    return wanted


def calibrate_by_decoding(
    decode_at: Callable[[float], list[Generation]],
    rates: list[float],
    start: list[float],
    max_rounds: int = 4,
    tolerance: float = 0.02,
    measured: list[dict] | None = None,
    on_measured: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Measured {"threshold", "deferral_rate", "examined", "step"} points (step: decode order): `start` first, then up to
    `max_rounds` refinements, each decoding one threshold for every requested rate that no
    measurement lies within `tolerance` of yet. Points already in `measured` (a resumed run) are
    not decoded again; `on_measured` sees each new point as soon as it exists."""
    points = list(measured or [])

    def measure(threshold: float) -> None:
        if any(abs(p["threshold"] - threshold) < SAME_THRESHOLD for p in points):
            return
        rate, examined = decoded_rate(decode_at(threshold))
        point = {"threshold": float(threshold), "deferral_rate": rate, "examined": examined, "step": len(points)}
        points.append(point)
        if on_measured:
            on_measured(point)

    for threshold in start:
        measure(threshold)
    for _ in range(max_rounds):
        missing = [r for r in rates if nearest(points, r)[1] > tolerance]
        if not missing:
            break
        for threshold in next_thresholds(points, missing):
            measure(threshold)
    return points


def nearest(points: list[dict], rate: float) -> tuple[dict, float]:
    """The measured point whose decoded rate lies nearest `rate`, and that distance."""
    point = min(points, key=lambda p: abs(p["deferral_rate"] - rate))
    return point, abs(point["deferral_rate"] - rate)


def calibration_error(points: list[dict], rates: list[float]) -> float:
    """Largest distance from a requested rate to its nearest measured rate: how closely the
    measurements cover the requests (interpolation does better between two close measurements)."""
    return max(nearest(points, rate)[1] for rate in rates)
