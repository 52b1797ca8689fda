"""What an evaluation set can resolve: each point's quality difference from a reference point, paired.

`deferral evaluate` writes every reply to generations.jsonl. This script scores them again with the
task's own per-example metric and prints, for every point, its mean difference from the reference
point (the target by default) with a paired bootstrap 95% interval, and the number of examples the
set would need for that interval to shrink to a given half-width (the interval narrows as 1/sqrt(n)).
The report of `deferral evaluate` prints the same intervals for new runs; this reads older folders too.

    python benchmarks/paired_quality.py runs/eval-stdlib_heldout/generations.jsonl \\
        --task hf:benchmarks/data/stdlib_heldout.jsonl --limit 800 [--against 'token-v3|speculative|alpha=0.6|K=5']
"""

from __future__ import annotations

import argparse

import numpy as np

from deferral.outputs import read_jsonl
from inference.metrics import MATCH_TOLERANCE, paired_difference
from inference.tasks import make_task

TARGET_KEY = "target|baseline|-|K=0"


def per_example_quality(generations_path: str, task) -> dict[str, np.ndarray]:
    """{point key: (n,) quality of each example's reply}, examples in the task's order."""
    examples = task.examples()
    replies: dict[str, dict[int, str]] = {}
    for g in read_jsonl(generations_path):
        replies.setdefault(g["key"], {})[g["index"]] = g["text"]
    out = {}
    for key, by_index in replies.items():
        if len(by_index) != len(examples):
            raise SystemExit(f"error: {key} has {len(by_index)} replies for {len(examples)} examples: pass the --limit "
                             "the evaluation ran with")
        scored = task.score_examples(examples, [by_index[i] for i in range(len(examples))])
        out[key] = np.array([s[task.quality_key] for s in scored])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generations", help="generations.jsonl of a `deferral evaluate` folder")
    parser.add_argument("--task", required=True, help="the task the folder was evaluated on (e.g. hf:FILE.jsonl)")
    parser.add_argument("--limit", type=int, default=None, help="the evaluation's --limit")
    parser.add_argument("--against", default=TARGET_KEY, help="the reference point's key (default: the target)")
    args = parser.parse_args(argv)
    task = make_task(args.task, limit=args.limit)
    quality = per_example_quality(args.generations, task)
    if args.against not in quality:
        raise SystemExit(f"error: no point {args.against!r} in {args.generations}: choose one of {', '.join(quality)}")
    ref = quality[args.against]
    band = MATCH_TOLERANCE * abs(quality.get(TARGET_KEY, ref).mean())
    print(f"{len(ref)} examples; differences from {args.against} (mean [95% interval]); 1% of the target = {band:.4f}")
    print(f"{'point':48s} {'quality':>8s} {'difference':>34s} {'n for +-1%':>11s}")
    for key, q in quality.items():
        d, low, high = paired_difference(q, ref)
        half = (high - low) / 2
        needed = f"{int(np.ceil(len(q) * (half / band) ** 2)):,}" if half > 0 and band > 0 else "—"
        print(f"{key:48s} {q.mean():8.4f} {d:+9.4f} [{low:+.4f}, {high:+.4f}] {needed:>11s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
