"""Replay keep/defer decisions over a cascade log's blocks: tokens per target call against what the
kept mismatches cost, for hand-set scores and learned harm scores, without decoding.

Every verified block of a `deferral log --mode cascade` log holds all its drafted positions with the
target's verdict and the look-ahead of the verify pass, so a decision can be replayed within each
block exactly (training/logs/blocks.py); the text after a kept mismatch stays the logged one. Every
fifth document is held out; a gradient-boosted regressor of the harm label (1 - roll-out chrF) is
trained on the others' 38 distribution and look-ahead features. For each score (keep the mismatches
scoring highest) the table gives, at matched tokens per target call, the kept mismatches per block and
their summed harm and target log-likelihood drop per block.

    python benchmarks/block_frontier.py runs/log                 # a cascade log folder
    python benchmarks/block_frontier.py runs/log --save-npz a.npz   # also keep its columns compactly
    python benchmarks/block_frontier.py a.npz                    # from such a file

What this proxy misses, measured: it ranks "harm per token gained" far above TokenV3 (half the kept
mismatches at equal tokens per call), yet decoded on 800 held-out cuts that rule scores lower chrF
than TokenV3 at equal tokens per call (docs/router.md).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

TARGET_TOKENS = (3.6, 3.8, 4.0, 4.2, 4.5)
COLUMNS = ("doc_id", "position", "label_mismatch", "label_rollout_chrf", "label_ll_drop")


def load(path: str, save_npz: str | None = None) -> dict:
    """Columns of a cascade log (folder) or of a file written by --save-npz: features without hidden
    states (float32), their names, COLUMNS and the block size."""
    if path.endswith(".npz"):
        d = np.load(path, allow_pickle=False)
        out = {k: d[k] for k in d.files}
        out["features"] = out["features"].astype(np.float32)
        out["names"] = [str(n) for n in out["names"]]
        out["block"] = int(out.get("block", 5))
        return out
    from deferral.features import FeatureSpec
    from training.router.datamodule import read_arrays

    arrays = read_arrays(path)
    if arrays.meta.get("mode") != "cascade":
        sys.exit(f"error: {path} is not a cascade log: log one with `deferral log --mode cascade`")
    names = FeatureSpec.from_dict(arrays.meta["feature_spec"]).names
    keep = [i for i, n in enumerate(names) if not n.startswith(("hp_", "hq_"))]
    out = {"features": arrays.features[:, keep], "names": [names[i] for i in keep],
           **{c: arrays.columns[c] for c in COLUMNS},
           "block": int((arrays.meta.get("log_config") or {}).get("draft_tokens", 5))}
    if save_npz:
        np.savez_compressed(save_npz, **{**out, "features": out["features"].astype(np.float16),
                                         "names": np.array(out["names"])})
    return out


def scores(log: dict, held: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """(N,) scores, higher = keep first; the learned ones fit on the mismatches of non-held documents."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    f, names = log["features"], log["names"]
    col = lambda name: f[:, names.index(name)]  # noqa: E731
    run = col("ahead_agree_run")
    top3 = np.clip(np.stack([col(f"p_top{i}") for i in (1, 2, 3)], -1), 1e-12, 1.0)
    entropy3 = -(top3 * np.log(top3)).sum(-1)  # FLy's gate
    harm = 1.0 - log["label_rollout_chrf"].astype(np.float32)
    train = (log["label_mismatch"] > 0) & ~held
    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed).fit(f[train], harm[train])
    predicted = model.predict(f)
    return {
        "token-v3: p(x)/max p": col("p_tok_over_p_max"),
        "kl: -KL(q||p)": -col("kl_q_p"),
        "fly (window 2): top-3 entropy": np.where(run >= 2, entropy3, -np.inf),
        "learned harm": -predicted,
        "learned harm per token gained": -predicted / (1.0 + run),
    }


def frontier(log: dict, held: np.ndarray, score: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(tokens per call, kept mismatches, harm, ll drop per block) on held documents, one per threshold."""
    from training.logs.blocks import Blocks, replay

    rows = held
    mismatch = log["label_mismatch"][rows] > 0
    harm = 1.0 - log["label_rollout_chrf"][rows].astype(np.float64)
    drop = log["label_ll_drop"][rows].astype(np.float64)
    s = score[rows]
    blocks = Blocks.of(log["doc_id"][rows], log["position"][rows], log["block"])  # once for every threshold
    finite = s[mismatch & np.isfinite(s)]
    points = []
    for cut in np.unique(np.quantile(finite, np.linspace(0.0, 1.0, 201))) if finite.size else []:
        result = replay(blocks, mismatch, s >= cut)
        n = len(result.tokens)
        kept = result.kept_mismatch
        points.append((result.tokens_per_call, kept.sum() / n, harm[kept].sum() / n, drop[kept].sum() / n))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a `deferral log --mode cascade` folder, or a .npz from --save-npz")
    parser.add_argument("--save-npz", default=None, help="write the columns used here to this file")
    args = parser.parse_args()
    log = load(args.log, args.save_npz)
    held = (log["doc_id"] % 5) == 0
    from training.logs.blocks import replay_blocks

    rows = held
    lossless = replay_blocks(log["doc_id"][rows], log["position"][rows], log["label_mismatch"][rows] > 0,
                             np.zeros(int(rows.sum()), bool), log["block"])
    print(f"held-out documents: {len(np.unique(log['doc_id'][held]))}, blocks: {len(lossless.tokens)}; "
          f"lossless speculative decoding: {lossless.tokens_per_call:.3f} tokens per target call")
    print("| score (keep the highest first) | " + " | ".join(f"~{t} tokens/call: kept / harm / ll drop" for t in TARGET_TOKENS) + " |")
    print("|---|" + "---|" * len(TARGET_TOKENS))
    for name, score in scores(log, held).items():
        points = frontier(log, held, score)
        cells = []
        for t in TARGET_TOKENS:
            best = min(points, key=lambda p: abs(p[0] - t))
            cells.append(f"{best[0]:.2f}: {best[1]:.2f} / {best[2]:.3f} / {best[3]:.2f}" if abs(best[0] - t) < 0.1 else "—")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
