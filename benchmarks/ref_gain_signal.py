"""How much of a mismatch's consequence against the reference can any rule see in advance?

At every position where drafter and target disagree, a cascade log (`deferral log --mode cascade`)
records `label_ref_gain`: chrF against the document's real next lines of the text that keeps the
drafted token (and lets the target continue) minus that of the text that keeps the target's token.
This script holds out every fifth document, orders the held-out mismatches by a score (a rule
accepts the highest-scoring ones first) and prints the summed reference gain when accepting the first
10%-60% of them, for TokenV3's score (p(x)/max p), -KL(q||p), a gradient-boosted regressor trained on
the other documents' distribution and look-ahead features, and a random order. A score that sees the
consequence would keep that sum near its best; one that does not tracks the random order.

    python benchmarks/ref_gain_signal.py runs/log          # a cascade log folder
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def accepted_gain(gain: np.ndarray, score: np.ndarray) -> list[float]:
    """Summed gain of the top SHARES of rows by score (highest first); gain, score: (M,)."""
    order = np.argsort(-score, kind="stable")
    total = np.cumsum(gain[order])
    return [float(total[max(int(share * len(gain)) - 1, 0)]) for share in SHARES]


def signal_table(features: np.ndarray, names: list[str], gain: np.ndarray, mismatch: np.ndarray,
                 doc_id: np.ndarray, seed: int = 0) -> tuple[dict[str, list[float]], dict]:
    """Rows: score name -> accepted_gain on held-out mismatches; plus counts and correlations.

    features: (N, F) without hidden states; gain: (N,) label_ref_gain (NaN where no reference);
    mismatch: (N,) bool; doc_id: (N,).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    rows = mismatch & ~np.isnan(gain)
    test = (doc_id % 5) == 0
    train, held = rows & ~test, rows & test
    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, early_stopping=True, random_state=seed)
    model.fit(features[train], gain[train])
    g = gain[held]
    scores = {
        "token-v3 p(x)/max p": features[held, names.index("p_tok_over_p_max")],
        "-KL(q||p)": -features[held, names.index("kl_q_p")],
        "boosted regressor": model.predict(features[held]),
        "random order": np.random.default_rng(seed).random(int(held.sum())),
    }
    table = {name: accepted_gain(g, s) for name, s in scores.items()}
    table["best possible"] = accepted_gain(g, g)
    stats = {
        "held_out_mismatches": int(held.sum()), "train_mismatches": int(train.sum()),
        "mean_gain": float(g.mean()), "share_gain_negative": float((g < 0).mean()), "share_gain_positive": float((g > 0).mean()),
        "corr": {name: float(np.corrcoef(s, g)[0, 1]) for name, s in scores.items()},
    }
    return table, stats


def print_report(table: dict[str, list[float]], stats: dict) -> None:
    print(f"held-out mismatches with a reference: {stats['held_out_mismatches']} (trained on {stats['train_mismatches']})")
    print(f"reference gain per mismatch: mean {stats['mean_gain']:+.4f}; lower {stats['share_gain_negative']:.1%}, "
          f"higher {stats['share_gain_positive']:.1%}")
    print("| score | " + " | ".join(f"accept {s:.0%}" for s in SHARES) + " | corr. with gain |")
    print("|---|" + "---|" * (len(SHARES) + 1))
    for name, sums in table.items():
        corr = stats["corr"].get(name)
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in sums) + f" | {'' if corr is None else f'{corr:+.3f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a `deferral log --mode cascade` folder")
    args = parser.parse_args()
    from deferral.features import FeatureSpec
    from training.router.datamodule import read_arrays

    arrays = read_arrays(args.log)
    names = FeatureSpec.from_dict(arrays.meta["feature_spec"]).names
    keep = [i for i, n in enumerate(names) if not n.startswith(("hp_", "hq_"))]
    cols = arrays.columns
    if "label_ref_gain" not in cols or np.isnan(cols["label_ref_gain"].astype(np.float32)).all():
        sys.exit(f"error: {args.log} has no reference-gain labels: log it with `deferral log --mode cascade` on a corpus with documents")
    table, stats = signal_table(
        arrays.features[:, keep], [names[i] for i in keep], cols["label_ref_gain"].astype(np.float32),
        cols["label_mismatch"] > 0, cols["doc_id"],
    )
    print_report(table, stats)


if __name__ == "__main__":
    main()
