"""Freeze held-out standard-library continuation cuts as a `hf:FILE` evaluation set.

    python benchmarks/make_stdlib_eval.py --n 800 --out benchmarks/data/stdlib_heldout.jsonl

The cuts are the `stdlib` task's (inference/tasks/stdlib_continuation.py: 40 context lines, the next 4
lines as reference, files of the held-out part only, several cuts per file at seeded lines), written
in the `hf:FILE` format (the reference starts with the newline that ends the prompt's last line), so
that every machine evaluates the same text whatever its Python version's standard library holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from inference.tasks.stdlib_continuation import StdlibContinuation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=800, help="cuts to write")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/stdlib_heldout.jsonl"))
    args = parser.parse_args()
    examples = StdlibContinuation(limit=args.n).examples()
    with open(args.out, "w") as f:
        for e in examples:
            row = {"prompt": e.prompt, "reference": "\n" + (e.reference or ""), "source": e.id,
                   "python": sys.version.split()[0]}
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(examples)} cuts to {args.out}")


if __name__ == "__main__":
    main()
