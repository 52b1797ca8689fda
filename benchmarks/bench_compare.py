"""Every way to decode, side by side on the same pair and prompts in one run: the target alone, the
drafter alone, transformers' assisted generation, our lossless speculative decoding, the best
hand-set rule and the learned rule. Reports relative speed, greedy equality where it is promised
(lossless speculative decoding and assisted generation must reproduce the target's greedy tokens)
and the task's quality.

    DEFERRAL_CACHE_DIR=... python benchmarks/bench_compare.py --drafter DRAFTER [--target TARGET] \
        [--task humaneval] [--limit 10] [--max-new-tokens 128] [--draft-tokens 5] \
        [--rule token-v3 --alpha 0.6 | --results runs/evaluate/humaneval/results.jsonl] \
        [--router ROUTER_DIR --deferral-rate 0.3] [--json out.json]

Every prompt is decoded by every method back to back, in an order rotated from prompt to prompt
(inference/timing.py's schedule), and the whole pass is repeated --repeats times, so load drifts on a
shared machine hit all methods alike. A method's relative speed is the median over repeats of
(target-only seconds / its seconds, summed over the prompts of that repeat); the lowest and highest
of those ratios are printed as its spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


from bench_speculative import hf_generate
from deferral.errors import DeferralError
from deferral.pair import load_pair
from deferral.rules import HAND_SET_RULES, make_rule
from inference.config import DecodeConfig
from inference.metrics import matches
from inference.runner import encode_prompts, eos_token_ids, run
from inference.tasks import make_task
from inference.timing import schedule

LOSSLESS = ("speculative (ours)", "assisted (transformers)")  # greedy output must equal the target's


def best_hand_set_rule(results_path: Path) -> tuple[str, float]:
    """From an evaluate results.jsonl: the fastest speculative hand-set point that matches the
    target's quality, or, when none does, the best quality (ties: faster)."""
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    target = next((r for r in rows if r["rule"] == "target"), None)
    candidates = [r for r in rows if r["rule"] in HAND_SET_RULES and r["mode"] == "speculative"]
    if target is None or not candidates:
        raise DeferralError(f"{results_path} has no target-only row or no hand-set speculative rows: run deferral evaluate")
    matching = [r for r in candidates if matches(r["quality"], target["quality"])]
    pick = min(matching, key=lambda r: r["relative_latency"]) if matching else \
        max(candidates, key=lambda r: (r["quality"], -r["relative_latency"]))
    return pick["rule"], pick["knob"]


def build_methods(args, pair, target, drafter, eos):
    """name -> function(prompt ids) returning (tokens, seconds, target_calls or None)."""
    cfg = DecodeConfig(draft_tokens=args.draft_tokens, max_new_tokens=args.max_new_tokens)

    def ours(rule):
        def decode(prompt):
            start = time.perf_counter()
            [gen] = run(pair, rule, [prompt], cfg)
            return gen.tokens, time.perf_counter() - start, gen.stats.target_calls
        return decode

    def assisted(prompt):
        tokens, seconds = hf_generate(target, prompt, args.max_new_tokens, eos, assistant=drafter, k=args.draft_tokens)
        return tokens, seconds, None

    methods = {
        "target only": ours(make_rule("target")),
        "drafter only": ours(make_rule("drafter")),
        "assisted (transformers)": assisted,
        "speculative (ours)": ours(make_rule("speculative")),
    }
    rule_name, alpha = args.rule, args.alpha
    if args.results:
        rule_name, alpha = best_hand_set_rule(Path(args.results))
    if rule_name:
        methods[f"{rule_name} α={alpha:g} (best hand-set)"] = ours(make_rule(rule_name, alpha))
    if args.router:
        from inference.learned import load_learned_rule

        rule = load_learned_rule(args.router, pair, threshold=args.threshold, deferral_rate=args.deferral_rate)
        methods[f"learned ({'rate' if args.deferral_rate is not None else 'threshold'}="
                f"{args.deferral_rate if args.deferral_rate is not None else rule.threshold:g})"] = ours(rule)
    return methods


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", default=None, help="drafter (default: the embedded default drafter)")
    parser.add_argument("--target", default=None, help="target (default: the embedded default target)")
    parser.add_argument("--task", default="humaneval", help="humaneval, stdlib or hf:<dataset or file>")
    parser.add_argument("--limit", type=int, default=10, help="number of task prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, default=5, help="K for every drafting method")
    parser.add_argument("--rule", default=None, help="hand-set rule to include (or pick it with --results)")
    parser.add_argument("--alpha", type=float, default=None, help="α of --rule")
    parser.add_argument("--results", default=None, help="an evaluate results.jsonl: include its best hand-set rule")
    parser.add_argument("--router", default=None, help="router export folder: include the learned rule")
    parser.add_argument("--deferral-rate", type=float, default=None, help="learned rule: target deferral rate")
    parser.add_argument("--threshold", type=float, default=None, help="learned rule: score threshold")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved passes over the prompts (the spread)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return compare(args)
    except DeferralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def compare(args) -> int:
    pair = load_pair(args.drafter, args.target)
    eos = sorted(eos_token_ids(pair))
    task = make_task(args.task, limit=args.limit,
                     chat=bool(getattr(pair.tokenizer, "chat_template", None)) if args.task == "humaneval" else None)
    examples = task.examples()
    prompts = encode_prompts(pair, [e.prompt for e in examples], chat=task.chat)
    methods = build_methods(args, pair, pair.target.model, pair.drafter.model, eos)
    for fn in methods.values():  # warm-up: first calls allocate and pick kernels
        fn(prompts[0][:32])

    names = list(methods)
    outputs: dict[str, list] = {name: [None] * len(prompts) for name in names}
    target_calls = dict.fromkeys(names, 0)
    repeats = []  # per repeat: method -> seconds summed over the prompts
    for repeat in range(args.repeats):
        seconds = dict.fromkeys(names, 0.0)
        for i, order in schedule(names, len(prompts), repeat):
            for name in order:
                tokens, took, calls = methods[name](prompts[i])
                if repeat == 0:
                    outputs[name][i] = tokens
                    target_calls[name] += calls or 0
                elif tokens != outputs[name][i]:  # greedy decoding repeats itself
                    print(f"warning: {name} decoded prompt {i} differently in repeat {repeat + 1}", file=sys.stderr)
                seconds[name] += took
        repeats.append(seconds)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    reference = outputs["target only"]
    rows = []
    for name in names:
        ratios = [r["target only"] / r[name] for r in repeats]
        replies = [pair.tokenizer.decode(t, skip_special_tokens=True) for t in outputs[name]]
        tokens = sum(len(t) for t in outputs[name])
        same = sum(a == b for a, b in zip(outputs[name], reference))
        rows.append({
            "method": name,
            "relative_speed": statistics.median(ratios),
            "relative_speed_low": min(ratios),
            "relative_speed_high": max(ratios),
            "seconds": [r[name] for r in repeats],
            "tokens": tokens,
            "greedy_equal_to_target": f"{same}/{len(prompts)}",
            "equality_promised": name in LOSSLESS,
            "quality": task.score(examples, replies)[task.quality_key],
            "tokens_per_target_call": tokens / target_calls[name] if target_calls[name] else None,
        })
    print(f"\n{task.quality_key} on {len(prompts)} {task.name} prompts, K={args.draft_tokens}, "
          f"max {args.max_new_tokens} new tokens, greedy; speed: median of {args.repeats} interleaved repeats "
          "[lowest-highest]\n")
    print(f"| method | relative speed | {task.quality_key} | greedy output = target | tokens / target call |")
    print("|---|---|---|---|---|")
    for r in rows:
        equal = r["greedy_equal_to_target"] + (" (promised)" if r["equality_promised"] else "")
        per_call = f"{r['tokens_per_target_call']:.2f}" if r["tokens_per_target_call"] else "—"
        speed = f"{r['relative_speed']:.2f}x [{r['relative_speed_low']:.2f}-{r['relative_speed_high']:.2f}]"
        print(f"| {r['method']} | {speed} | {r['quality']:.3f} | {equal} | {per_call} |")
    broken = [r["method"] for r in rows if r["equality_promised"] and r["greedy_equal_to_target"].split("/")[0]
              != str(len(prompts))]
    if broken:
        print(f"warning: greedy outputs differ from the target's for {', '.join(broken)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
