"""Baselines for the router on the same features and the same document splits.

- logistic regression (scikit-learn, standardised features) calibrated on the validation split
  with isotonic or sigmoid regression (FrozenEstimator: the fitted model is not refitted);
- the paper's hand-set rules used as scores (higher = defer), read off the feature vector by name:
    chow      1 - max q
    diff      max p - max q
    opt       max p - max q - alpha * TV          (at a fixed alpha)
    opt-ratio (max p - max q) / TV                (the alpha at which OPT starts deferring)
    token-v3  1 - p(x) / max p                    (x = the drafted token)
Each is scored by AUROC and average precision against a target's "deferral needed" label on the
test documents.
"""

from __future__ import annotations

import numpy as np

RULE_SCORES = ("chow", "diff", "opt", "opt-ratio", "token-v3")


def rule_scores(features: np.ndarray, names: list[str], alpha: float = 0.5) -> dict[str, np.ndarray]:
    """(N, F) features -> {rule: (N,) score}; higher means defer."""
    col = {name: features[:, i].astype(np.float64) for i, name in enumerate(names)}
    gain = col["p_top1"] - col["q_top1"]
    return {
        "chow": 1.0 - col["q_top1"],
        "diff": gain,
        "opt": gain - alpha * col["tv"],
        "opt-ratio": gain / np.maximum(col["tv"], 1e-6),
        "token-v3": 1.0 - col["p_tok_over_p_max"],
    }


def fit_logistic_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    calib_x: np.ndarray,
    calib_y: np.ndarray,
    method: str = "isotonic",
    max_train_rows: int = 200_000,
    seed: int = 0,
):
    """Standardised L2 logistic regression on (a sample of) train, calibrated on the validation split."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y) > max_train_rows:
        pick = np.random.default_rng(seed).choice(len(train_y), max_train_rows, replace=False)
        train_x, train_y = train_x[pick], train_y[pick]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, l1_ratio=0.0, max_iter=500, random_state=seed))
    model.fit(train_x, train_y)
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method=method)
    calibrated.fit(calib_x, calib_y)
    return calibrated


def score_table(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """{method: {"auroc", "ap"}} of each score against binary labels (NaN when one class is absent)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    one_class = labels.min() == labels.max()
    out = {}
    for name, s in scores.items():
        s = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0, posinf=1e12, neginf=-1e12)
        out[name] = {
            "auroc": float("nan") if one_class else float(roc_auc_score(labels, s)),
            "ap": float("nan") if one_class else float(average_precision_score(labels, s)),
        }
    return out


def markdown_table(results: dict[str, dict[str, dict[str, float]]], positives: dict[str, float]) -> str:
    """One table: a row per method, AUROC and AP column pairs per target."""
    targets = list(results)
    methods: list[str] = []
    for t in targets:
        methods += [m for m in results[t] if m not in methods]
    methods.sort(key=lambda m: m != "router")  # the router first, the rest in their given order
    head = "| method | " + " | ".join(f"{t} AUROC | {t} AP" for t in targets) + " |"
    rule = "|---|" + "---|---|" * len(targets)
    rows = [head, rule]
    for m in methods:
        cells = []
        for t in targets:
            r = results[t].get(m)
            cells += [f"{r['auroc']:.4f}", f"{r['ap']:.4f}"] if r else ["-", "-"]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    rate_cells = [cell for t in targets for cell in (f"{positives[t]:.3f}", "")]
    rows.append("| (positive rate) | " + " | ".join(rate_cells) + " |")
    return "\n".join(rows)
