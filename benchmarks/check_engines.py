"""Greedy tokens of every engine side by side: each rule decodes the same prompts under each engine, and
the script prints how many prompts give the same tokens as under the first engine. Lossless rules
(target, speculative) must also equal the first engine's target decoding token for token.

    python benchmarks/check_engines.py --device cuda --engines graphs,static,hf      # the GPU path
    python benchmarks/check_engines.py --drafter D --target T --engines static,hf    # CPU

Exit code 1 when a lossless rule's tokens differ from the target's (float rounding may flip a near-tie
between engines for a lossy rule; the counts show how often).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deferral.errors import exit_code_of
from deferral.pair import load_pair
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import encode_prompts, run

ROOT = Path(__file__).resolve().parents[1]
RULES = ("target", "speculative", "token-v3:0.6", "kl:0.4", "fly:0")


def build(name: str, pair, router: str | None, threshold: float | None):
    if name == "learned":
        from inference.learned import load_learned_rule

        return load_learned_rule(router, pair, threshold=threshold)
    rule, _, alpha = name.partition(":")
    return make_rule(rule, float(alpha) if alpha else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", default=None)
    parser.add_argument("--target", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engines", default="graphs,static,hf", help="comma-separated; the first is the reference")
    parser.add_argument("--rules", default=",".join(RULES), help="NAME or NAME:ALPHA, comma-separated; 'learned' "
                        "takes --router")
    parser.add_argument("--router", default=None)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--prompts", type=int, default=16, help="held-out stdlib cuts (benchmarks/data)")
    parser.add_argument("--prompt-chars", type=int, default=600, help="each cut's last N characters")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: compare(args))


def compare(args) -> int:
    engines = args.engines.split(",")
    pair = load_pair(args.drafter, args.target, device=args.device)
    lines = (ROOT / "benchmarks" / "data" / "stdlib_heldout.jsonl").read_text().splitlines()[: args.prompts]
    prompts = encode_prompts(pair, [json.loads(line)["prompt"][-args.prompt_chars :] for line in lines])
    broken = False
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        reference_target = None
        for name in args.rules.split(","):
            rule = build(name, pair, args.router, args.threshold)
            out = {engine: [g.tokens for g in run(pair, rule, prompts, DecodeConfig(
                max_new_tokens=args.max_new_tokens, engine=engine), batch_size=batch_size)] for engine in engines}
            if name == "target":
                reference_target = out[engines[0]]
            same = ", ".join(f"{e} {sum(a == b for a, b in zip(out[e], out[engines[0]]))}/{len(prompts)}"
                             for e in engines[1:])
            line = f"batch {batch_size} {name}: same tokens as {engines[0]}: {same}"
            if name in ("target", "speculative") and reference_target is not None:
                equal = all(out[e] == reference_target for e in engines)
                broken |= not equal
                line += f"; equal to the target on every engine: {'yes' if equal else 'NO'}"
            print(line, flush=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
