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
        k = int(round(rate * n))  # positions deferred
        if k == 0:
            threshold = float(s_sorted[0])  # nothing scores above the maximum
        elif k == n:
            threshold = float(s_sorted[-1]) - 1.0
        else:
            # Midway between the k-th highest and the next one: rate k/n on these positions.
            threshold = float((s_sorted[k - 1] + s_sorted[k]) / 2)
        rows.append(
            {
                "deferral_rate": float(rate),
                "threshold": threshold,
                "gap01_loss": float((cum01[-1] - cum01[k]) / n),
                "gap_nll_loss": float((cumnll[-1] - cumnll[k]) / n),
            }
        )
    return {"split": split, "positions": int(n), "alpha": float(alpha), "rows": rows}


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
