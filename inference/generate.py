"""`deferral generate`: decode prompts with any rule and print texts or per-prompt JSON statistics."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.cli_args import add_config_flags, add_pair_arguments, config_from_args, flag, parse
from deferral.errors import DeferralError
from deferral.rules import RULE_NAMES, DeferralRule, make_rule, warn_alpha_outside_range
from inference.config import DecodeConfig

DECODE_FLAGS_SKIPPED = ("stop_at_eos",)  # DecodeConfig fields no command sets


def add_decode_arguments(parser: ArgumentParser) -> None:
    """The decoding knobs shared by generate, evaluate, calibrate and serve: DecodeConfig's fields,
    plus how many prompts run together and the chat template."""
    add_config_flags(parser, DecodeConfig, skip=DECODE_FLAGS_SKIPPED)
    add_config_flags(parser, BatchOptions)


@dataclass
class BatchOptions:
    """How prompts are fed to the decode loop (beside DecodeConfig, which is per loop)."""

    batch_size: int = flag(1, "prompts decoded together in one loop")
    chat: bool = flag(False, "wrap each prompt in the tokenizer's chat template")


@dataclass
class RuleOptions:
    """Which rule decodes (generate, serve: there the default of requests that name none)."""

    rule: str = flag("speculative", f"one of: {', '.join(RULE_NAMES)}")
    alpha: float | None = flag(None, "the knob of a hand-set rule")
    router: str | None = flag(None, "router export folder (--rule learned)")
    threshold: float | None = flag(None, "learned rule: defer above this score")
    deferral_rate: float | None = flag(None, "learned rule: pick the threshold giving this deferral rate (router calibration)")


@dataclass
class GenerateOptions:
    sequential: bool = flag(False, "run the rule as a sequential token-level cascade instead of speculatively")
    prompt: str | None = flag(None, "one prompt text")
    prompts: str | None = flag(None, "JSONL file, one {\"prompt\": ...} per line")
    json: bool = flag(False, "print one JSON object per prompt")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral generate", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, RuleOptions)
    add_decode_arguments(parser)
    add_config_flags(parser, GenerateOptions)
    return parser


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    if (prompt is None) == (prompts_file is None):
        raise DeferralError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    if prompt is not None:
        return [prompt]
    path = Path(prompts_file)
    if not path.is_file():
        raise DeferralError(f"prompts file {path} does not exist: check the path")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DeferralError(f"prompts file {path} is not UTF-8 text (byte {exc.start}): pass a JSONL file") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DeferralError(f"{path}:{n} is not a JSON object with a 'prompt' field: fix that line") from None
        if not isinstance(prompt, str):  # null would decode as the text "None"
            kind = "null" if prompt is None else type(prompt).__name__
            raise DeferralError(f"{path}:{n} has a 'prompt' that is {kind}, not text: give a string on that line")
        texts.append(prompt)
    if not texts:
        raise DeferralError(f"{path} holds no prompts: add lines like {{\"prompt\": \"...\"}}")
    return texts


def decode_config(args) -> DecodeConfig:
    return config_from_args(DecodeConfig, args, skip=DECODE_FLAGS_SKIPPED)


def build_rule(args, pair) -> DeferralRule:
    if args.rule == "learned":
        if not args.router:
            raise DeferralError("--rule learned needs --router DIR (an export from `deferral export`)")
        from inference.learned import load_learned_rule

        rule = load_learned_rule(
            args.router, pair, threshold=args.threshold, deferral_rate=args.deferral_rate, alpha=args.alpha
        )
        warn_alpha_outside_range("learned", args.alpha)
        return rule
    for name in ("router", "threshold", "deferral_rate"):
        if getattr(args, name) is not None:
            raise DeferralError(f"--{name.replace('_', '-')} only applies to --rule learned")
    rule = make_rule(args.rule, args.alpha)
    warn_alpha_outside_range(args.rule, args.alpha)
    return rule


def check_draft_room(prompts: list[list[int]], max_context: int, draft_tokens: int, drafts: bool = True) -> None:
    """Before decoding: refuse a prompt that leaves no room for new tokens; say so when K is capped."""
    from inference.batch import check_prompt_room, context_room

    check_prompt_room(prompts, max_context)
    room = context_room(max(len(p) for p in prompts), max_context)
    if drafts and draft_tokens > room:
        print(f"warning: --draft-tokens {draft_tokens} is more than the context leaves after the longest prompt "
              f"({room} positions): at most {room} tokens are drafted per step", file=sys.stderr)


def main(argv: list[str]) -> int:
    from deferral.pair import load_pair
    from inference.runner import encode_prompts, run

    args = parse(build_parser(), argv)
    if args.rule not in RULE_NAMES:
        raise DeferralError(f"unknown rule '{args.rule}': choose one of {', '.join(RULE_NAMES)}")
    cfg = decode_config(args)
    texts = read_prompts(args.prompt, args.prompts)
    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    rule = build_rule(args, pair)
    prompts = encode_prompts(pair, texts, chat=args.chat)
    drafts = not args.sequential and args.rule not in ("target", "drafter")
    check_draft_room(prompts, pair.max_context, cfg.draft_tokens, drafts=drafts)
    results = run(pair, rule, prompts, cfg, batch_size=args.batch_size, sequential=args.sequential)
    for i, gen in enumerate(results):
        text = pair.tokenizer.decode(gen.tokens, skip_special_tokens=True)
        if args.json:
            row = {"index": i, "rule": args.rule, "text": text, "tokens": gen.tokens, **gen.stats.as_dict()}
            print(json.dumps(row), flush=True)
        else:
            print(text, flush=True)
    if not args.json:
        total = sum(g.stats.new_tokens for g in results)
        wall = max(g.stats.wall_s for g in results) if results else 0.0
        print(f"[{args.rule}] {total} new tokens, {len(results)} prompt(s), {wall:.2f} s", file=sys.stderr)
    return 0
