"""Every way to decode, side by side on the same pair and prompts in one run: the target alone (ours
and, at batch size 1, transformers' `generate`), the drafter alone, transformers' assisted generation
(batch size 1), our lossless speculative decoding, the best hand-set rule and the learned rule.
Reports relative speed, tokens per second, greedy equality where it is promised (lossless
speculative decoding and assisted generation must reproduce the target's greedy tokens) and the
task's quality.

    DEFERRAL_CACHE_DIR=... python benchmarks/bench_compare.py --drafter DRAFTER [--target TARGET] \
        [--task humaneval] [--limit 10] [--max-new-tokens 128] [--draft-tokens 5] \
        [--rule token-v3 --alpha 0.6 | --results runs/evaluate/humaneval/results.jsonl] \
        [--router ROUTER_DIR --deferral-rate 0.3] [--device cuda --dtype float32 --batch-size 16] [--json out.json]

At --batch-size 1 each prompt is a group; at --batch-size N > 1 every prompt forms one group that our
loops decode with N rows, a waiting prompt taking the row of a finished one (what `deferral generate
--batch-size N` does with more prompts than rows), or, with --lockstep, groups of N prompts each decoded
as one batch that runs until its slowest row ends. Every group is decoded by every method back to back,
in an order rotated from group to group
(inference/timing.py's schedule), and the whole pass is repeated --repeats times, so load drifts on a
shared machine hit all methods alike. A method's relative speed is the median over repeats of
(target-only seconds / its seconds, summed over the groups of that repeat); the lowest and highest
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
from deferral.errors import DeferralError, exit_code_of
from deferral.pair import load_pair
from deferral.rules import HAND_SET_RULES, make_rule
from inference.config import BONUS_SOURCES, DecodeConfig
from inference.metrics import matches
from inference.runner import encode_prompts, eos_token_ids, run
from inference.tasks import make_task
from inference.timing import schedule

# greedy output must equal the target's (in float32; bfloat16 rounding may flip near-ties)
LOSSLESS = ("speculative (ours)", "assisted (transformers)", "target (transformers generate)")


def lossless(method: str) -> bool:
    return method.split(" [")[0] in LOSSLESS or method.startswith("speculative (")


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


DRAFTING_KEYS = {"k": ("draft_tokens", int), "schedule": ("draft_schedule", str),
                 "confidence": ("draft_confidence", float), "stop": ("draft_stop", str), "risk": ("draft_stop_risk", float)}


def drafting_settings(spec: str) -> dict:
    """'k=8,stop=head.json,risk=0.5' -> DecodeConfig fields (keys: k, schedule, confidence, stop, risk)."""
    settings = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in DRAFTING_KEYS or not value:
            raise DeferralError(f"--drafting '{spec}': '{item}' is not KEY=VALUE with KEY one of {', '.join(DRAFTING_KEYS)}")
        field, kind = DRAFTING_KEYS[key]
        settings[field] = kind(value)
    return settings


def build_methods(args, pair, target, drafter, eos):
    """name -> function(group of prompt ids) returning (tokens per prompt, seconds, target_calls or None).
    transformers' generate and assisted generation decode one prompt at a time: at batch size 1 only."""
    engines = args.engine.split(",")

    def ours(rule, engine, **drafting):
        cfg = DecodeConfig(**{"draft_tokens": args.draft_tokens, "max_new_tokens": args.max_new_tokens,
                              "engine": engine, **drafting})

        def decode(group):
            start = time.perf_counter()
            gens = run(pair, rule, group, cfg, batch_size=args.batch_size)  # returns after the last host sync
            return [g.tokens for g in gens], time.perf_counter() - start, sum(g.stats.target_calls for g in gens)
        return decode

    def transformers(assistant):
        def decode(group):
            [prompt] = group
            tokens, seconds = hf_generate(target, prompt, args.max_new_tokens, eos, assistant=assistant,
                                          k=args.draft_tokens if assistant is not None else None)
            return [tokens], seconds, None
        return decode

    rules = {"target only": make_rule("target"), "drafter only": make_rule("drafter"),
             "speculative (ours)": make_rule("speculative")}
    rule_name, alpha = args.rule, args.alpha
    if args.results:
        rule_name, alpha = best_hand_set_rule(Path(args.results))
    if rule_name:
        rules[f"{rule_name} α={alpha:g} (best hand-set)"] = make_rule(rule_name, alpha)
    if args.router:
        from inference.learned import load_learned_rule

        rule = load_learned_rule(args.router, pair, threshold=args.threshold, deferral_rate=args.deferral_rate)
        rules[f"learned ({'rate' if args.deferral_rate is not None else 'threshold'}="
              f"{args.deferral_rate if args.deferral_rate is not None else rule.threshold:g})"] = rule
    methods = {}
    for engine in engines:  # the first engine's "target only" is every ratio's denominator
        for name, rule in rules.items():
            lossy = not rule.lossless and not rule.plain_model
            for bonus in args.bonus.split(",") if lossy else ["rule"]:
                label = name + ("" if engine == engines[0] else f" [{engine}]")
                methods[label + ("" if bonus == "rule" else f" [bonus {bonus}]")] = ours(rule, engine, bonus=bonus)
        for spec in args.drafting:  # lossless speculative decoding under other drafting settings
            name = f"speculative ({spec})" + ("" if engine == engines[0] else f" [{engine}]")
            methods[name] = ours(make_rule("speculative"), engine, **drafting_settings(spec))
        if engine == engines[0] and args.batch_size == 1 and not args.no_transformers:
            methods["target (transformers generate)"] = transformers(None)
            methods["assisted (transformers)"] = transformers(drafter)
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together by our loops")
    parser.add_argument("--bonus", default="rule", help="the lossy rules' --bonus (rule, target); both "
                        "comma-separated (rule,target) give each lossy rule a row per choice")
    parser.add_argument("--lockstep", action="store_true", help="batch size N > 1: decode groups of N prompts "
                        "as one batch each (no refilling of finished rows)")
    parser.add_argument("--engine", default="auto", help="our loops' --engine; several comma-separated "
                        "(hf,graphs) repeat our methods under each, the first one's target being the baseline")
    parser.add_argument("--drafting", nargs="*", default=[], help="extra lossless speculative rows under other "
                        "drafting settings, e.g. k=3 k=5,schedule=heuristic k=8,confidence=0.4 k=8,stop=HEAD.json,risk=0.5")
    parser.add_argument("--no-transformers", action="store_true", help="leave out transformers' generate and "
                        "assisted generation")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if not set(args.bonus.split(",")) <= set(BONUS_SOURCES):
        parser.error(f"--bonus takes {' or '.join(BONUS_SOURCES)}, comma-separated; got '{args.bonus}'")
    if args.threads:
        torch.set_num_threads(args.threads)
    return exit_code_of(lambda: compare(args))


def compare(args) -> int:
    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    eos = sorted(eos_token_ids(pair))
    task = make_task(args.task, limit=args.limit,
                     chat=bool(getattr(pair.tokenizer, "chat_template", None)) if args.task == "humaneval" else None)
    examples = task.examples()
    prompts = encode_prompts(pair, [e.prompt for e in examples], chat=task.chat)
    if not prompts:
        raise DeferralError(f"the task {args.task} gave no prompts: pass a --limit of at least 1")
    size = args.batch_size if args.batch_size == 1 or args.lockstep else len(prompts)
    groups = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    methods = build_methods(args, pair, pair.target.model, pair.drafter.model, eos)
    for fn in methods.values():  # warm-up at the batch size: first calls allocate and pick kernels
        for group in (groups if pair.target.model.device.type == "cuda" else groups[:1]):
            fn(group if pair.target.model.device.type == "cuda" else [p[:32] for p in group])  # GPU: capture graphs

    names = list(methods)
    outputs: dict[str, list] = {name: [None] * len(groups) for name in names}  # per group: tokens per prompt
    target_calls = dict.fromkeys(names, 0)
    repeats = []  # per repeat: method -> seconds summed over the groups
    for repeat in range(args.repeats):
        seconds = dict.fromkeys(names, 0.0)
        for i, order in schedule(names, len(groups), repeat):
            for name in order:
                tokens, took, calls = methods[name](groups[i])
                if repeat == 0:
                    outputs[name][i] = tokens
                    target_calls[name] += calls or 0
                elif tokens != outputs[name][i]:  # greedy decoding repeats itself
                    print(f"warning: {name} decoded group {i} differently in repeat {repeat + 1}", file=sys.stderr)
                seconds[name] += took
        repeats.append(seconds)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    outputs = {name: [t for group in per_group for t in group] for name, per_group in outputs.items()}

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
            "tokens_per_s": tokens / statistics.median(r[name] for r in repeats),
            "greedy_equal_to_target": f"{same}/{len(prompts)}",
            "equality_promised": lossless(name),
            "quality": task.score(examples, replies)[task.quality_key],
            "tokens_per_target_call": tokens / target_calls[name] if target_calls[name] else None,
        })
    lockstep = " (lockstep groups)" if args.lockstep and args.batch_size > 1 else ""
    print(f"\n{task.quality_key} on {len(prompts)} {task.name} prompts, K={args.draft_tokens}, "
          f"max {args.max_new_tokens} new tokens, greedy, batch size {args.batch_size}{lockstep}, "
          f"{pair.target.model.device} "
          f"{args.dtype}; speed: median of {args.repeats} interleaved repeats [lowest-highest]\n")
    print(f"| method | relative speed | tokens/s | {task.quality_key} | greedy output = target | tokens / target call |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        equal = r["greedy_equal_to_target"] + (" (promised)" if r["equality_promised"] else "")
        per_call = f"{r['tokens_per_target_call']:.2f}" if r["tokens_per_target_call"] else "—"
        speed = f"{r['relative_speed']:.2f}x [{r['relative_speed_low']:.2f}-{r['relative_speed_high']:.2f}]"
        print(f"| {r['method']} | {speed} | {r['tokens_per_s']:.1f} | {r['quality']:.3f} | {equal} | {per_call} |")
    broken = [r["method"] for r in rows if r["equality_promised"] and r["greedy_equal_to_target"].split("/")[0]
              != str(len(prompts))]
    if broken:
        print(f"warning: greedy outputs differ from the target's for {', '.join(broken)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
