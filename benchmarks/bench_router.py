"""Router benchmarks: training time on a million positions, and the router's share of decode time.

    # 1) train on >= 1M positions (a real log replicated to reach the row count), 2 CPU cores
    taskset -c 0,1 python benchmarks/bench_router.py train --data logs/stdlib --rows 1000000 --threads 2
    #    (or save the log as .npz first: python benchmarks/bench_router.py npz --data logs/stdlib --out log.npz)

    # 2) share of cascade decode wall time spent in the learned rule (features + router)
    python benchmarks/bench_router.py decode --router runs/router/export --drafter DRAFTER_DIR \
        [--target TARGET] [--prompts 4] [--max-new-tokens 64]

Replication is for timing only: copies of a document get new doc ids, so validation AUROC in the
`train` benchmark is optimistic (copies of training documents land in validation). Quality numbers
come from `deferral train` + `deferral baselines` on the un-replicated log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\n\n\ndef list_python_files(folder):\n",
    "class Stack:\n    \"\"\"A last-in first-out stack.\"\"\"\n\n    def __init__(self):\n",
    "def parse_csv_line(line, sep=','):\n",
    "def is_prime(n: int) -> bool:\n",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"\n",
]


def save_npz(log: str, out: str) -> None:
    """A logged dataset's columns as one .npz (to carry the data to a machine without `datasets`)."""
    from training.router.datamodule import read_arrays

    arrays = read_arrays(log)
    np.savez(out, features=arrays.features, meta=json.dumps(arrays.meta), **arrays.columns)


def load_arrays(data: str):
    """A `deferral log` folder or an .npz from `npz` -> training.router.datamodule.LoggedArrays."""
    from training.router.datamodule import LoggedArrays, read_arrays

    if not data.endswith(".npz"):
        return read_arrays(data)
    z = np.load(data)
    columns = {k: z[k] for k in z.files if k not in ("features", "meta")}
    return LoggedArrays(features=z["features"], columns=columns, meta=json.loads(str(z["meta"])))


def replicate(arrays, rows: int):
    """Tile the positions up to >= rows; each copy of a document gets a new doc id."""
    from training.router.datamodule import LoggedArrays

    n = len(arrays)
    copies = -(-rows // n)
    docs = int(arrays.columns["doc_id"].max()) + 1
    columns = {k: np.tile(v, copies) for k, v in arrays.columns.items()}
    columns["doc_id"] = columns["doc_id"] + np.repeat(np.arange(copies) * docs, n)
    return LoggedArrays(features=np.tile(arrays.features, (copies, 1)), columns=columns, meta=arrays.meta)


def bench_train(args) -> dict:
    """The training code of `deferral train fit` (same DataModule, module, callbacks and settings
    from configs/router.yaml) without MLflow, timed from tensors in memory to the end of fit."""
    import lightning as L
    import torch
    import yaml
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from training.router.datamodule import FeatureDataModule
    from training.router.module import RouterModule

    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    arrays = replicate(load_arrays(args.data), args.rows)
    data_cfg = {k: v for k, v in cfg["data"].items() if k != "path"}
    t0 = time.perf_counter()
    dm = FeatureDataModule(path=args.data, **data_cfg)
    dm.use_arrays(arrays)
    model = RouterModule(num_features=arrays.features.shape[1], target=dm.target, **cfg["model"])
    trainer_cfg = {k: v for k, v in cfg["trainer"].items() if k not in ("default_root_dir",)}
    es = {k: v for k, v in cfg["early_stopping"].items()}
    with __import__("tempfile").TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            **trainer_cfg, default_root_dir=tmp, logger=False, enable_progress_bar=False,
            callbacks=[ModelCheckpoint(dirpath=tmp, filename="best", **cfg["checkpoint"]), EarlyStopping(**es)],
        )
        L.seed_everything(cfg.get("seed_everything", 1234))
        trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    return {
        "rows": len(arrays), "train_rows": len(dm.datasets["train"]), "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1), "epochs": trainer.current_epoch,
        "best_val_auroc": round(float(trainer.checkpoint_callback.best_model_score), 4),
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < trainer.max_epochs),
    }


def bench_decode(args) -> dict:
    import torch

    from deferral.pair import load_pair
    from inference.config import DecodeConfig
    from inference.learned import load_learned_rule
    from inference.runner import encode_prompts, run

    torch.manual_seed(0)
    pair = load_pair(args.drafter, args.target)
    rule = load_learned_rule(args.router, pair, threshold=args.threshold, deferral_rate=args.deferral_rate)
    spent = {"rule": 0.0, "scorer": 0.0, "features": 0.0, "lookahead": 0.0, "calls": 0}
    inner_target, inner_defers, inner_scorer = rule.target, rule.defers, rule.scorer

    def timed_scorer(x):
        t0 = time.perf_counter()
        out = inner_scorer(x)
        spent["scorer"] += time.perf_counter() - t0
        return out

    def timed(inner):  # the rule's two entry points: defers (greedy decisions) and target (π)
        def call(d):
            t0 = time.perf_counter()
            out = inner(d)
            spent["rule"] += time.perf_counter() - t0
            spent["calls"] += 1
            return out
        return call

    import deferral.rules as rules

    inner_features = rules.compute_features

    def timed_features(*a, **k):
        t0 = time.perf_counter()
        out = inner_features(*a, **k)
        spent["features"] += time.perf_counter() - t0
        return out

    rules.compute_features = timed_features
    import inference.speculative as loop

    inner_lookahead = loop.block_lookahead

    def timed_lookahead(*a, **k):  # computed by the decode loop, outside the rule, for block routers
        t0 = time.perf_counter()
        out = inner_lookahead(*a, **k)
        spent["lookahead"] += time.perf_counter() - t0
        return out

    loop.block_lookahead = timed_lookahead
    rule.scorer, rule.target, rule.defers = timed_scorer, timed(inner_target), timed(inner_defers)
    prompts = encode_prompts(pair, PROMPTS[: args.prompts], chat=False)
    cfg = DecodeConfig(draft_tokens=5, temperature=0.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    run(pair, rule, prompts[:1], DecodeConfig(draft_tokens=5, max_new_tokens=4), batch_size=1)  # warm-up
    runs = []
    for _ in range(args.repeats):  # the same decode again: the share's spread on this machine
        spent.update(rule=0.0, scorer=0.0, features=0.0, lookahead=0.0, calls=0)
        start = time.perf_counter()
        gens = run(pair, rule, prompts, cfg, batch_size=1)
        wall = time.perf_counter() - start
        runs.append({"wall": wall, **spent})
    runs.sort(key=lambda r: (r["rule"] + r["lookahead"]) / r["wall"])
    shares = [(r["rule"] + r["lookahead"]) / r["wall"] for r in runs]
    mid = runs[len(runs) // 2]  # the split of the (upper) median run
    wall = mid["wall"]
    tokens = sum(g.stats.new_tokens for g in gens)
    return {
        "prompts": len(prompts), "new_tokens": tokens, "repeats": args.repeats, "wall_s": round(wall, 2),
        "learned_rule_s": round(mid["rule"], 3), "features_s": round(mid["features"], 3),
        "router_s": round(mid["scorer"], 3),
        "lookahead_s": round(mid["lookahead"], 3),
        # the decision's whole cost: the rule (features + router) plus the loop's look-ahead for it;
        # median over repeats, with the lowest and highest share
        "decision_share": round(statistics.median(shares), 4),
        "decision_share_low": round(shares[0], 4), "decision_share_high": round(shares[-1], 4),
        "learned_rule_share": round(mid["rule"] / wall, 4), "features_share": round(mid["features"] / wall, 4),
        "router_share": round(mid["scorer"] / wall, 4),
        "rule_calls": mid["calls"], "threshold": rule.threshold,
        "deferred": sum(g.stats.deferred for g in gens), "drafted": sum(g.stats.drafted for g in gens),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train on >= --rows positions, report wall time and metrics")
    t.add_argument("--data", required=True, help="a `deferral log` folder (or an .npz from `npz`) to replicate")
    t.add_argument("--rows", type=int, default=1_000_000)
    t.add_argument("--threads", type=int, default=2, help="torch threads (pin the process to as many cores)")
    t.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "router.yaml"))
    z = sub.add_parser("npz", help="save a log's columns as .npz")
    z.add_argument("--data", required=True)
    z.add_argument("--out", required=True)
    d = sub.add_parser("decode", help="share of decode time spent in the learned rule")
    d.add_argument("--router", required=True)
    d.add_argument("--drafter", default=None)
    d.add_argument("--target", default=None)
    d.add_argument("--deferral-rate", type=float, default=None)
    d.add_argument("--threshold", type=float, default=None, help="instead of --deferral-rate")
    d.add_argument("--prompts", type=int, default=4)
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--repeats", type=int, default=3, help="timed decodes (the share's median and spread)")
    args = parser.parse_args(argv)
    if args.what == "npz":
        save_npz(args.data, args.out)
        return 0
    result = bench_train(args) if args.what == "train" else bench_decode(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
