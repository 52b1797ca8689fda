"""How many decode steps a batched cascade takes: batches decoded one after another (each ending with
its slowest row) against rows refilled from the waiting prompts. Step counts depend on the greedy
tokens only, not on the hardware, so this runs anywhere; on a launch-bound GPU a step costs about the
same whatever the rows do, so wall time follows the counts.

    python benchmarks/count_steps.py --limit 32 --batch-size 16 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics

from deferral.pair import load_pair
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import encode_prompts, length_order, token_space
from inference.speculative import SpeculativeDecoder
from inference.tasks import make_task


def decode_counting(pair, rule, prompts, cfg, slots: int) -> tuple[int, int, list]:
    """(steps, target forwards, generations) of one decoder over `prompts` with `slots` rows."""
    decoder = SpeculativeDecoder(pair.drafter.model, pair.target.model, rule, prompts, cfg, token_space(pair),
                                 slots=slots)
    steps = 0
    while decoder.active:
        decoder.step()
        steps += 1
    return steps, decoder.t_lm.calls, decoder.state.results()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", default=None)
    parser.add_argument("--target", default=None)
    parser.add_argument("--task", default="stdlib")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rule", default="speculative")
    parser.add_argument("--alpha", type=float, default=None)
    args = parser.parse_args(argv)
    pair = load_pair(args.drafter, args.target)
    prompts = encode_prompts(pair, [e.prompt for e in make_task(args.task, limit=args.limit).examples()])
    prompts = [prompts[i] for i in length_order(prompts)]
    rule, cfg, n = make_rule(args.rule, args.alpha), DecodeConfig(max_new_tokens=args.max_new_tokens), args.batch_size
    steps = forwards = 0
    row_steps = []
    for start in range(0, len(prompts), n):
        s, f, gens = decode_counting(pair, rule, prompts[start : start + n], cfg, slots=n)
        steps, forwards = steps + s, forwards + f
        row_steps += [g.stats.target_calls - 1 for g in gens]
    print(f"batches one after another: {steps} steps, {forwards} target forwards "
          f"(mean row {statistics.mean(row_steps):.1f} steps, slowest {max(row_steps)})")
    s, f, gens = decode_counting(pair, rule, prompts, cfg, slots=n)
    print(f"rows refilled:             {s} steps, {f} target forwards "
          f"({f - s} of them prefills of joining prompts)")


if __name__ == "__main__":
    main()
