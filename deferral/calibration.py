"""Router score -> threshold, for a requested deferral rate or for a largest acceptable quality loss.

The table is built on held-out positions and stored in router.json. A position is deferred when
    score - alpha * tv > threshold,
the same test the learned rule makes (keep iff score <= threshold + alpha * TV). Each row gives,
for one deferral rate, the threshold that reaches it and the quality lost by keeping the drafter's
token at the other positions, measured against the reference text:
    gap01_loss  = mean over positions of 1[kept] * (1[drafter wrong] - 1[target wrong])
    gap_nll_loss = mean over positions of 1[kept] * (NLL_drafter - NLL_target)
(0 at deferral rate 1, where every token goes through the target test).

Pure numpy: inference reads the table without training libraries.
"""

from __future__ import annotations

import numpy as np

from deferral.errors import DeferralError

RATE_GRID = np.round(np.linspace(0.0, 1.0, 101), 4)  # deferral rates 0.00, 0.01, ..., 1.00


def build_table(
    scores: np.ndarray,
    gap01: np.ndarray,
    gap_nll: np.ndarray,
    tv: np.ndarray | None = None,
    alpha: float = 0.0,
    split: str = "val",
) -> dict:
    """Calibration table over held-out positions.

    Args:
        scores: (N,) router scores (higher = defer).
        gap01, gap_nll: (N,) the label_gap01 / label_gap_nll columns of the same positions.
        tv: (N,) D_TV(q, p) per position; needed when alpha != 0.
        alpha: the learned rule's alpha the table is valid for.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise DeferralError("cannot calibrate the router on zero held-out positions: log more documents")
    if alpha:
        if tv is None:
            raise DeferralError("calibrating at alpha != 0 needs the tv column of the logged data")
        s = s - alpha * np.asarray(tv, dtype=np.float64)
    order = np.argsort(-s, kind="stable")  # most-deferred first
    s_sorted = s[order]
    # Loss kept when deferring the k highest scores: total loss minus that of the deferred prefix.
    cum01 = np.concatenate([[0.0], np.cumsum(np.asarray(gap01, dtype=np.float64)[order])])
    cumnll = np.concatenate([[0.0], np.cumsum(np.asarray(gap_nll, dtype=np.float64)[order])])
    n = s.size
    rows = []
    for rate in RATE_GRID:
        threshold, k = _cut(s_sorted, int(round(rate * n)))  # k: positions deferred at that threshold
        rows.append(
            {
                "deferral_rate": float(rate),
                "threshold": threshold,
                "gap01_loss": float((cum01[-1] - cum01[k]) / n),
                "gap_nll_loss": float((cumnll[-1] - cumnll[k]) / n),
            }
        )
    return {"split": split, "positions": int(n), "alpha": float(alpha), "rows": rows}


def _cut(s_sorted: np.ndarray, k: int) -> tuple[float, int]:
    """(threshold, positions deferred) for deferring the k highest of `s_sorted` (descending) under
    `score > threshold`.

    Between two different scores the threshold lies midway and defers exactly k. Where the k-th and
    the (k+1)-th scores tie, no threshold splits the tied group: it is deferred whole (threshold just
    below the tied score) or kept whole (threshold at it), whichever count lies nearer to k.
    """
    n = s_sorted.size
    if k == 0:
        return float(s_sorted[0]), 0  # nothing scores above the maximum
    if k == n:
        return float(s_sorted[-1]) - 1.0, n
    high, low = s_sorted[k - 1], s_sorted[k]
    if high > low:
        return float((high + low) / 2), k
    above = int(np.searchsorted(-s_sorted, -high, side="left"))  # scores strictly above the tie
    at_or_above = int(np.searchsorted(-s_sorted, -high, side="right"))
    if at_or_above - k < k - above:
        return float(np.nextafter(high, -np.inf)), at_or_above
    return float(high), above


def _check_table(table: dict | None) -> list[dict]:
    if not table or not table.get("rows"):
        raise DeferralError("this router has no calibration table: pass --threshold X instead of a deferral rate")
    return table["rows"]


def threshold_for_rate(table: dict, rate: float) -> float:
    """Threshold giving deferral rate `rate` (0..1) on the calibration data (linear interpolation)."""
    rows = _check_table(table)
    if not 0.0 <= rate <= 1.0:
        raise DeferralError(f"--deferral-rate {rate} is outside [0, 1]: pass a fraction such as 0.3")
    rates = np.array([r["deferral_rate"] for r in rows])
    thresholds = np.array([r["threshold"] for r in rows])
    return float(np.interp(rate, rates, thresholds))


def threshold_for_quality_loss(table: dict, max_loss: float, metric: str = "gap01_loss") -> tuple[float, float]:
    """Lowest deferral rate whose measured quality loss is <= max_loss -> (threshold, deferral rate)."""
    rows = _check_table(table)
    for row in rows:  # rows go from deferral rate 0 upwards
        if row[metric] <= max_loss:
            return float(row["threshold"]), float(row["deferral_rate"])
    last = rows[-1]
    return float(last["threshold"]), float(last["deferral_rate"])


def deferral_rate(scores: np.ndarray, threshold: float, tv: np.ndarray | None = None, alpha: float = 0.0) -> float:
    """Fraction of positions deferred at `threshold` (score - alpha*tv > threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    if alpha and tv is not None:
        s = s - alpha * np.asarray(tv, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else 0.0


def decoded_rate_table(measured: list[dict], **provenance) -> dict:
    """The decode-time calibration table from measured (threshold, decoded deferral rate) points.

    `measured` holds one {"threshold", "deferral_rate", "examined"} per decode of the calibration
    prompts (and optionally "step", the decode order). Sorted by threshold; the rate is made non-increasing in the threshold (a running
    minimum from the lowest threshold up), since a higher threshold defers less in expectation and
    a measured bump is decoding noise, not a property to interpolate through.
    """
    if not measured:
        raise DeferralError("no decode measurements to calibrate on: decode at least one threshold")
    rows = sorted(({k: float(r[k]) for k in ("threshold", "deferral_rate")}
                   | {k: int(r[k]) for k in ("examined", "step") if k in r} for r in measured),
                  key=lambda r: r["threshold"])
    running = 1.0
    for row in rows:
        running = min(running, row["deferral_rate"])
        row["monotone_rate"] = running
    return {"measured_on": "decode", **provenance, "rows": rows}


def decoded_rate_range(table: dict) -> tuple[float, float]:
    """(lowest, highest) deferral rate measured while decoding."""
    rates = [r["monotone_rate"] for r in table["rows"]]
    return min(rates), max(rates)


def threshold_for_decoded_rate(table: dict, rate: float) -> float:
    """Threshold at which decoding defers `rate` of the examined positions (linear interpolation
    between measured thresholds; the end thresholds outside the measured range)."""
    if not 0.0 <= rate <= 1.0:
        raise DeferralError(f"--deferral-rate {rate} is outside [0, 1]: pass a fraction such as 0.3")
    rows = table["rows"]  # sorted by threshold; monotone_rate non-increasing along them
    if rate >= rows[0]["monotone_rate"]:
        return float(rows[0]["threshold"])
    # From the highest threshold down, the first segment whose rates span `rate`: on a plateau
    # (equal rates at several thresholds) that is the highest threshold reaching the rate, and
    # above a plateau the interpolation starts from its lowest threshold, where the rate last held.
    for low, high in zip(reversed(rows[:-1]), reversed(rows[1:])):
        r_low, r_high = low["monotone_rate"], high["monotone_rate"]
        if r_high <= rate <= r_low and r_low > r_high:
            share = (rate - r_high) / (r_low - r_high)
            return float(high["threshold"] - share * (high["threshold"] - low["threshold"]))
    return float(rows[-1]["threshold"])  # below every measured rate: the least deferral measured
