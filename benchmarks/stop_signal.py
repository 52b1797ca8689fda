"""Can the drafter tell, before the target sees a draft, whether the target will keep it?

A stop head (SpecDec++) ends a drafted block early once the drafter expects the next draft to be
rejected. Under greedy lossless speculative decoding a draft is kept exactly where the drafter's
argmax equals the target's (`argmax_agree` in a `deferral log` folder). This script holds out every
fourth document and prints the held-out AUROC of predicting that from what the drafter has at
drafting time: its top probability alone (what `--draft-confidence` thresholds), a logistic
regression on its distribution statistics (q_top1-4, entropy, margin), one on its last hidden state
(logged with `--hidden drafter`), and one on both. A stop head earns its cost only where it beats the
top probability clearly.

    deferral log --data stdlib:train --max-docs 16 --max-positions 60000 --hidden drafter --out runs/stoplog
    python benchmarks/stop_signal.py runs/stoplog
"""

from __future__ import annotations

import argparse

import numpy as np

from deferral.features import DRAFTER_FEATURES as Q_STATS  # q_top1-4, q_entropy, q_margin


def stop_signal(features: np.ndarray, names: list[str], doc_id: np.ndarray) -> dict[str, float]:
    """Held-out AUROC per predictor of argmax agreement. features: (N, F); doc_id: (N,)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kept = features[:, names.index("argmax_agree")] > 0.5
    test = doc_id % 4 == 0
    if test.all() or not test.any():
        raise SystemExit("error: need documents on both sides of the split (ids divisible by 4 and not): log more documents")
    stats = [names.index(n) for n in Q_STATS]
    hidden = [i for i, n in enumerate(names) if n.startswith("hq_")]
    result = {"q_top1 (--draft-confidence)": roc_auc_score(kept[test], features[test][:, stats[0]])}
    groups = {"distribution statistics": stats, "drafter hidden state": hidden, "both": stats + hidden}
    for label, columns in groups.items():
        if not columns or (label != "distribution statistics" and not hidden):
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
        model.fit(features[~test][:, columns], kept[~test])
        result[label] = roc_auc_score(kept[test], model.predict_proba(features[test][:, columns])[:, 1])
    result["_kept"] = float(kept.mean())
    result["_held_out_rows"] = int(test.sum())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a `deferral log` folder (with --hidden drafter for the hidden-state rows)")
    args = parser.parse_args()
    from deferral.features import FeatureSpec
    from training.logs.logged_data import load_logged

    ds, meta = load_logged(args.log)
    names = FeatureSpec.from_dict(meta["feature_spec"]).names
    ds = ds.with_format("numpy")
    result = stop_signal(np.asarray(ds["features"], dtype=np.float32), names, np.asarray(ds["doc_id"]))
    print(f"drafts kept by the target: {result.pop('_kept'):.3f}; held-out positions: {result.pop('_held_out_rows')}")
    print("| predictor of 'the target keeps this draft' | held-out AUROC |")
    print("|---|---|")
    for label, auroc in result.items():
        print(f"| {label} | {auroc:.3f} |")


if __name__ == "__main__":
    main()
