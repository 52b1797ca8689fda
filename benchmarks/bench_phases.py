"""Where a speculative cascade's decode time goes, per rule: drafting, verification (the target's
pass over the block), the rule's decision (features, router, acceptance) and bookkeeping (cache
roll-back, commits), on the default pair. One run; rules interleaved prompt by prompt.

    python benchmarks/bench_phases.py                      # 2 CPU cores: 8 prompts, 64 tokens, batch 1
    python benchmarks/bench_phases.py --device cuda --prompts 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--router", default=str(ROOT / "models" / "default-router"))
    parser.add_argument("--threshold", type=float, default=None, help="learned rule (default: the router's own)")
    args = parser.parse_args()
    if args.threshold is None:  # the router's own default threshold
        from inference.learned import export_default_threshold

        args.threshold = export_default_threshold(args.router)

    from deferral.pair import load_pair
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.learned import load_learned_rule
    from inference.phases import PHASES, PhaseTimer
    from inference.runner import encode_prompts, token_space
    from inference.speculative import speculative_generate

    pair = load_pair(device=args.device)
    lines = (ROOT / "benchmarks" / "data" / "stdlib_heldout.jsonl").read_text().splitlines()[: args.prompts]
    prompts = encode_prompts(pair, [json.loads(line)["prompt"][-600:] for line in lines])
    rules = {
        "lossless speculative": make_rule("speculative"),
        "token-v3 (α = 0.6)": make_rule("token-v3", 0.6),
        f"learned (threshold {args.threshold})": load_learned_rule(args.router, pair, threshold=args.threshold),
    }
    cfg = DecodeConfig(max_new_tokens=args.max_new_tokens)
    space = token_space(pair)
    timers = {name: PhaseTimer(args.device) for name in rules}
    wall = {name: 0.0 for name in rules}
    tokens = {name: 0 for name in rules}
    calls = {name: 0 for name in rules}
    for ids in prompts:  # round-robin over rules, prompt by prompt
        for name, rule in rules.items():
            start = time.perf_counter()
            gen = speculative_generate(pair.drafter.model, pair.target.model, rule, [ids], cfg, space,
                                       phases=timers[name])[0]
            wall[name] += time.perf_counter() - start
            tokens[name] += gen.stats.new_tokens
            calls[name] += gen.stats.target_calls
    print(f"| rule | tokens/s | tokens / target call | {' | '.join(PHASES)} | prefill and other |")
    print("|---|---|---|" + "---|" * (len(PHASES) + 1))
    for name in rules:
        sec = timers[name].seconds
        other = max(wall[name] - sum(sec.values()), 0.0)
        shares = " | ".join(f"{sec[p] / wall[name]:.1%}" for p in PHASES)
        print(f"| {name} | {tokens[name] / wall[name]:.1f} | {tokens[name] / calls[name]:.2f} | {shares} | "
              f"{other / wall[name]:.1%} |")


if __name__ == "__main__":
    main()
