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
test documents, and by its greedy-cascade gain (`greedy_gain_table`): AUROC over all positions is
dominated by positions where both models agree, where no rule's decision changes the output.
"""

from __future__ import annotations

import numpy as np

RULE_SCORES = ("chow", "diff", "opt", "opt-ratio", "token-v3")


def rule_scores(features: np.ndarray, names: list[str], alpha: float = 0.5) -> dict[str, np.ndarray]:
    """(N, F) features -> {rule: (N,) score}; higher means defer. The formulas are deferral.rules'
    own, applied to the logged feature columns of the drafted token."""
    from deferral.rules import chow_statistic, diff_statistic, opt_margin, token_v3_statistic

    col = {name: features[:, i].astype(np.float64) for i, name in enumerate(names)}
    return {
        "chow": chow_statistic(col),
        "diff": diff_statistic(col),
        "opt": opt_margin(col, alpha),
        "opt-ratio": diff_statistic(col) / np.maximum(col["tv"], 1e-6),  # the α at which OPT starts deferring
        "token-v3": token_v3_statistic(col),
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


GAIN_BUDGETS = (0.1, 0.2, 0.3, 0.5)


def greedy_gain_table(
    scores: dict[str, np.ndarray], gap01: np.ndarray, disagree: np.ndarray, budgets: tuple[float, ...] = GAIN_BUDGETS
) -> dict[str, list[float]]:
    """What each score buys in a greedy cascade, where a decision matters only where argmax q != argmax p.

    Deferring at such a position swaps the drafter's token for the target's: label_gap01 = +1 when
    that fixes a reference error (target right, drafter wrong), -1 when it introduces one, 0 when
    both are wrong. For each budget f, defer at the f highest-scoring disagreement positions and sum
    their gap01, per 1000 positions. The "oracle" row sorts by gap01 itself: the ceiling any score
    over these features could reach.

    Args:
        scores: {method: (N,) score}, higher = defer.
        gap01: (N,) label_gap01.
        disagree: (N,) bool, argmax q != argmax p.
    Returns:
        {method: [gain per 1000 positions at each budget]}, oracle last.
    """
    idx = np.flatnonzero(disagree)
    n = max(len(gap01), 1)
    out = {}
    for name, s in {**scores, "oracle": gap01}.items():
        s = np.nan_to_num(np.asarray(s, dtype=np.float64)[idx], nan=0.0, posinf=1e12, neginf=-1e12)
        ranked = gap01[idx][np.argsort(-s, kind="stable")].astype(np.float64)
        out[name] = [1000.0 * ranked[: int(f * len(idx))].sum() / n for f in budgets]
    return out


def gain_markdown(gains: dict[str, list[float]], budgets: tuple[float, ...] = GAIN_BUDGETS) -> str:
    head = "| method | " + " | ".join(f"defer {f:.0%} of disagreements" for f in budgets) + " |"
    rows = [head, "|---|" + "---|" * len(budgets)]
    rows += [f"| {m} | " + " | ".join(f"{g:.1f}" for g in v) + " |" for m, v in gains.items()]
    return "\n".join(rows)
