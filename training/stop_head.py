"""Fit a drafting stop head (inference/stop_head.py) on a `deferral log` folder.

The label is greedy lossless acceptance: the target keeps a draft exactly where its argmax equals the
drafter's (`argmax_agree`). The head reads the drafter-only features and is a standardised logistic
regression; every fourth document (by doc_id) is held out to report how well it ranks and how well
its probabilities are calibrated, since the stopping rule multiplies them along a block.
"""

from __future__ import annotations

import numpy as np

from deferral.errors import DeferralError
from deferral.features import DRAFTER_FEATURES
from inference.stop_head import StopHead

HOLD_OUT_EVERY = 4


def fit_stop_head(features: np.ndarray, names: list[str], doc_id: np.ndarray) -> tuple[StopHead, dict]:
    """(N, F) logged features with their names and (N,) document ids -> (head, held-out report)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    missing = [n for n in (*DRAFTER_FEATURES, "argmax_agree") if n not in names]
    if missing:
        raise DeferralError(f"the log has no {missing} features: log with the default feature set")
    kept = features[:, names.index("argmax_agree")] > 0.5
    x = features[:, [names.index(n) for n in DRAFTER_FEATURES]].astype(np.float64)
    test = doc_id % HOLD_OUT_EVERY == 0
    if test.all() or not test.any() or len(set(kept[~test])) < 2:
        raise DeferralError("a stop head needs documents on both sides of the split (doc_id divisible by "
                            f"{HOLD_OUT_EVERY} and not) and both kept and rejected drafts: log more documents")
    mean, scale = x[~test].mean(0), x[~test].std(0) + 1e-6
    model = LogisticRegression(max_iter=3000, C=0.1).fit((x[~test] - mean) / scale, kept[~test])
    head = StopHead(DRAFTER_FEATURES, tuple(map(float, mean)), tuple(map(float, scale)),
                    tuple(map(float, model.coef_[0])), float(model.intercept_[0]))
    predicted = model.predict_proba((x[test] - mean) / scale)[:, 1]
    report = {
        "held_out_positions": int(test.sum()),
        "kept": float(kept[test].mean()),
        "mean_predicted_keep": float(predicted.mean()),
        "auroc_head": float(roc_auc_score(kept[test], predicted)),
        "auroc_top_probability": float(roc_auc_score(kept[test], x[test][:, 0])),
    }
    return head, report
