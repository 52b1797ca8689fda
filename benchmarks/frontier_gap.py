"""Each learned point against every hand-set rule at the same cost: how far behind (or ahead) it is.

Reads the results.jsonl of one or more `deferral evaluate` folders on the same task (rows of a rule
may come from several runs), and for every learned point interpolates each hand-set rule's quality
linearly between its two points that bracket the learned point's tokens per target call (a rule
whose points do not reach that cost is left out), then prints the best of them and the learned
point's relative shortfall. This is the "falls behind no hand-set rule by more than x%" check.

    python benchmarks/frontier_gap.py runs/eval-prose_heldout*/results.jsonl
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from deferral.outputs import read_jsonl

REFERENCES = ("target", "drafter", "speculative")


def interpolated_quality(curve: list[tuple[float, float]], cost: float) -> float | None:
    """Quality of a (cost, quality) curve at `cost`, linear between its neighbours; None outside it."""
    xs, ys = zip(*sorted(curve))
    if not xs[0] <= cost <= xs[-1]:
        return None
    return float(np.interp(cost, xs, ys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.jsonl files of one task")
    parser.add_argument("--learned-from", default=None,
                        help="take learned rows only from this file (the others give the hand-set rules)")
    args = parser.parse_args(argv)
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    learned = []
    for path in args.results:
        if not Path(path).is_file():
            raise SystemExit(f"error: {path} is not a file: pass the results.jsonl of `deferral evaluate` folders")
        for row in read_jsonl(path):
            cost, quality = row.get("tokens_per_target_call"), row["quality"]
            if row["rule"] == "learned":
                if args.learned_from in (None, path):
                    learned.append((row["knob_name"], row["knob"], cost, quality))
            elif row["rule"] not in REFERENCES and cost is not None:
                curves[row["rule"]][cost] = quality
    print(f"{'learned point':24s} {'quality':>8s} {'tokens/call':>11s} {'best hand-set there':>24s} {'behind by':>9s}")
    for name, knob, cost, quality in sorted(learned, key=lambda r: r[2]):
        there = {rule: q for rule, c in curves.items()
                 if (q := interpolated_quality(list(c.items()), cost)) is not None}
        if not there:
            print(f"{name}={knob:<14} {quality:8.4f} {cost:11.3f} {'(no hand-set rule reaches this cost)':>24s}")
            continue
        rule, best = max(there.items(), key=lambda kv: kv[1])
        gap = (best - quality) / best
        print(f"{name}={knob:<14} {quality:8.4f} {cost:11.3f} {rule + f' {best:.4f}':>24s} "
              f"{'ahead' if gap <= 0 else f'{gap:.1%}':>9s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
