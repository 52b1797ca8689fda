"""Each learned point against every hand-set rule at the same cost: how far behind (or ahead) it is.

Reads the results.jsonl of one or more `deferral evaluate` folders on the same task (rows of a rule
may come from several runs), and for every learned point interpolates each hand-set rule's quality
linearly between its two points that bracket the learned point's tokens per target call (a rule
whose points do not reach that cost is left out), then prints the best of them and the learned
point's relative shortfall. This is the "falls behind no hand-set rule by more than x%" check.
Every rule at its lossless end is lossless speculative decoding (the same greedy tokens), so the
lossless row, where present, starts every curve, the learned one too.

It then prints, per rule, the tokens per target call at which its curve leaves the band of the
target's quality (`--band`, default 1%): interpolated between the last point inside and the first
outside (the goal's "tokens per target call at the target's quality"), beside its best measured point
inside the band.

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


def band_edge(curve: list[tuple[float, float]], floor: float) -> float | None:
    """The cost at which a (cost, quality) curve, walked from its cheapest point, first drops below
    `floor` (linear between the two points around the drop); its last cost when it never does; None
    when its cheapest point is already below."""
    points = sorted(curve)
    if points[0][1] < floor:
        return None
    for (c0, q0), (c1, q1) in zip(points, points[1:]):
        if q1 < floor:
            return c0 + (c1 - c0) * (q0 - floor) / (q0 - q1)
    return points[-1][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.jsonl files of one task")
    parser.add_argument("--learned-from", default=None,
                        help="take learned rows only from this file (the others give the hand-set rules)")
    parser.add_argument("--band", type=float, default=0.01, help="the target's quality band, relative (0.01: 1%%)")
    args = parser.parse_args(argv)
    curves: dict[str, dict[float, float]] = defaultdict(dict)  # speculative hand-set rule -> {cost: quality}
    sequential: dict[str, dict[float, float]] = defaultdict(dict)  # the same rules as sequential cascades
    learned = []  # (source file, knob name, knob, cost, quality)
    references: dict[str, tuple[float | None, float]] = {}
    quality_key = "quality"
    for path in args.results:
        if not Path(path).is_file():
            raise SystemExit(f"error: {path} is not a file: pass the results.jsonl of `deferral evaluate` folders")
        for row in read_jsonl(path):
            cost, quality = row.get("tokens_per_target_call"), row["quality"]
            quality_key = row.get("quality_key", quality_key)
            if row["rule"] in REFERENCES:
                references[row["rule"]] = (cost, quality)
            elif cost is None:
                continue
            elif row["rule"] == "learned":
                if args.learned_from in (None, path):
                    learned.append((path, row["knob_name"], row["knob"], cost, quality))
            elif row.get("mode", "speculative") == "speculative":
                curves[row["rule"]][cost] = quality
            else:
                sequential[f"{row['rule']} ({row['mode']})"][cost] = quality
    learned_curves: dict[str, dict[float, float]] = defaultdict(dict)  # one curve per results file
    several = len({path for path, *_ in learned}) > 1
    for path, _, _, cost, quality in learned:
        learned_curves[f"learned ({path})" if several else "learned"][cost] = quality
    if "speculative" in references:  # every speculative curve starts at lossless decoding
        for curve in [*curves.values(), *learned_curves.values()]:
            curve.setdefault(*references["speculative"])
    curves.update(sequential)
    print(f"{'learned point':24s} {'quality':>8s} {'tokens/call':>11s} {'best hand-set there':>24s} {'behind by':>9s}")
    for _, name, knob, cost, quality in sorted(learned, key=lambda r: r[3]):
        there = {rule: q for rule, c in curves.items()
                 if (q := interpolated_quality(list(c.items()), cost)) is not None}
        if not there:
            print(f"{name}={knob:<14} {quality:8.4f} {cost:11.3f} {'(no hand-set rule reaches this cost)':>24s}")
            continue
        rule, best = max(there.items(), key=lambda kv: kv[1])
        gap = (best - quality) / best
        print(f"{name}={knob:<14} {quality:8.4f} {cost:11.3f} {rule + f' {best:.4f}':>24s} "
              f"{'ahead' if gap <= 0 else f'{gap:.1%}':>9s}")
    if "target" in references:
        print_band_edges({**curves, **learned_curves}, references["target"][1], args.band, quality_key)
    return 0


def print_band_edges(curves: dict[str, dict[float, float]], target: float, band: float, quality_key: str) -> None:
    floor = target * (1 - band)
    print(f"\nat the target's quality ({quality_key} >= {floor:.4f}, within {band:.1%} of {target:.4f}): "
          "tokens per target call")
    width = max([12, *map(len, curves)])
    print(f"{'rule':{width}s} {'band edge':>10s} {'best point inside':>18s}")
    for rule, curve in sorted(curves.items()):
        if not curve:
            continue
        edge = band_edge(list(curve.items()), floor)
        inside = [c for c, q in curve.items() if q >= floor]
        print(f"{rule:{width}s} {'-' if edge is None else f'{edge:.3f}':>10s} "
              f"{'-' if not inside else f'{max(inside):.3f}':>18s}")


if __name__ == "__main__":
    raise SystemExit(main())
