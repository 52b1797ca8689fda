"""`deferral baselines`' comparison: the paper's rules as scores, logistic regression and (optionally)
an exported router, on the router's own test documents of a log (or on every document of one it never
saw). `args` are the command's flags (training/router/baselines_cli.py: BaselinesOptions)."""

from __future__ import annotations

import numpy as np
import torch

from deferral.errors import DeferralError
from deferral.router import load_router
from training.router.baselines import (
    fit_logistic_regression,
    gain_markdown,
    greedy_gain_table,
    markdown_table,
    rule_scores,
    score_table,
)
from training.router.datamodule import binary_target, check_fractions, check_target, read_arrays, split_documents


def logistic_scores(
    x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray], test_x: np.ndarray, calibration: str
) -> np.ndarray:
    """(N_test,) calibrated logistic-regression probabilities; the train rate when a split has one class."""
    if min(np.unique(y[masks[s]]).size for s in ("train", "val")) < 2:  # a constant label: nothing to fit
        return np.full(len(test_x), float(y[masks["train"]].mean()))
    lr = fit_logistic_regression(x[masks["train"]], y[masks["train"]], x[masks["val"]], y[masks["val"]],
                                 method=calibration)
    return lr.predict_proba(test_x)[:, 1]


def check_same_pair(router_dir: str, meta: dict, data: str, data_meta: dict) -> None:
    from inference.learned import pair_mismatch

    problem = pair_mismatch(meta.get("pair", {}), data_meta.get("pair", {}))
    if problem:
        raise DeferralError(
            f"router {router_dir} was trained for another pair than {data} was logged with ({problem}): "
            "compare it on a log of its own drafter and target"
        )


def compare(args) -> tuple[str, dict]:
    router, meta = (None, {}) if args.router is None else load_router(args.router)
    data = meta.get("data") or {}
    seed = int(data.get("split_seed", args.split_seed))
    val_f = float(data.get("val_fraction", args.val_fraction))
    test_f = float(data.get("test_fraction", args.test_fraction))
    if not args.whole_log:
        check_fractions(val_f, test_f, ("--val-fraction", "--test-fraction"))
    targets = args.targets.split(",") if args.targets else [(meta.get("label") or {}).get("target", "gap01")]
    for t in targets:
        check_target(t)
    if args.calibration not in ("isotonic", "sigmoid"):
        raise DeferralError(f"--calibration {args.calibration}: choose isotonic or sigmoid")

    arrays = read_arrays(args.data)
    if meta:  # as `deferral generate` refuses it: a router's scores describe its own pair's logs only
        check_same_pair(args.router, meta, args.data, arrays.meta)
    names = arrays.meta["feature_spec"]["names"]
    if meta and not isinstance((meta.get("feature_spec") or {}).get("names"), list):
        raise DeferralError(f"router {args.router} lists no feature names in router.json: re-export it")
    if meta and meta["feature_spec"]["names"] != names:
        raise DeferralError(f"router {args.router} was trained on other features than {args.data}: use its own data")
    if args.whole_log:
        masks = {"test": np.ones(len(arrays.columns["doc_id"]), dtype=bool)}
    else:
        masks = split_documents(arrays.columns["doc_id"], val_f, test_f, seed)
    test = masks["test"]
    test_x = arrays.features[test]  # (N_test, F), indexed once: every score reads it
    shared = rule_scores(test_x, names, alpha=args.alpha)
    router_scores = None
    if router is not None:
        with torch.inference_mode():
            router_scores = router.score(torch.from_numpy(test_x)).numpy()
    results, positives = {}, {}
    for t in targets:
        y = binary_target(arrays, t)
        scores = dict(shared)
        if not args.whole_log:  # logistic regression needs training documents
            lr_scores = logistic_scores(arrays.features, y, masks, test_x, args.calibration)
            scores = {f"logistic regression ({args.calibration})": lr_scores, **scores}
        if router_scores is not None and t == (meta.get("label") or {}).get("target"):
            scores = {"router": router_scores, **scores}
        results[t] = score_table(scores, y[test])
        positives[t] = float(y[test].mean())
    which = "Every document" if args.whole_log else "Test documents"
    header = (
        f"{which} of {args.data} ({int(test.sum())} positions; split seed {seed}); "
        f"OPT at alpha={args.alpha}.\n\n"
    )
    disagree = test_x[:, names.index("argmax_agree")] < 0.5
    gain_scores = {**({"router": router_scores} if router_scores is not None else {}), **shared}
    gains = greedy_gain_table(gain_scores, arrays.columns["label_gap01"][test], disagree)
    gain_text = (
        f"\n\nGreedy-cascade gain on the same documents: label_gap01 summed over the deferred positions, per 1000 "
        f"positions, deferring at the top-scoring share of the {int(disagree.sum())} positions where the two argmaxes "
        f"differ (higher is better; the oracle is the ceiling):\n\n"
    )
    record = {"results": results, "positive_rate": positives, "greedy_gain": gains}
    return header + markdown_table(results, positives) + gain_text + gain_markdown(gains), record
