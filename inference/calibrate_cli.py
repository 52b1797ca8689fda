"""`deferral calibrate`: measure a router's deferral rates while decoding and store the thresholds.

    deferral calibrate --router runs/router/export                # stdlib train-part cuts, rates 0.1-0.5
    deferral calibrate --router models/default-router --out runs/calibrated --device cuda --limit 200

Decodes calibration prompts (by default cuts of the standard library's train part, which no
evaluation uses) with the learned rule at a few thresholds, measures the deferral rate decoding
reaches at each (deferred / examined positions, as `deferral evaluate` reports), and writes the
measured table into the export's router.json as `decode_calibration`. From then on
`--deferral-rate R` (generate, evaluate, serve) reads its threshold from that table. Measurements
are kept in `decode_calibration.partial.jsonl` beside router.json until the table is written, so an
interrupted run resumes.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.errors import DeferralError
from deferral.outputs import check_output_folder
from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse, required_flag
from inference.generate import add_decode_arguments, check_draft_room, decode_config

# Where calibration decodes differently from generate: the router's tables are measured on 64-token
# continuations, and calibration prompts run batched.
CALIBRATION_DEFAULTS = {"max_new_tokens": 64, "batch_size": 16}


@dataclass
class CalibrateOptions:
    router: str = required_flag("router export folder (see deferral export)")
    out: str | None = flag(None, "write a calibrated copy of the export here (default: update --router in place)")
    task: str = flag("stdlib", "prompts: stdlib (cuts of --part) or hf:<dataset or file> (keep evaluation sets out)")
    part: str = flag("train", "stdlib part cut into prompts: train or heldout")
    prompt_column: str = flag("prompt", "hf task: column holding the prompt")
    limit: int = flag(200, "calibration prompts")
    rates: list[float] = flag([0.1, 0.2, 0.3, 0.4, 0.5], "deferral rates the table must cover: each gets a measurement near it")
    max_rounds: int = flag(4, "refinements after the first decodes, each one threshold per rate not yet met")
    tolerance: float = flag(0.02, "a requested rate is met once a decode lands this close to it")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral calibrate", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, CalibrateOptions)
    add_decode_arguments(parser)
    parser.set_defaults(**CALIBRATION_DEFAULTS)
    return parser


def check_args(args) -> None:
    if not args.rates or not all(0.0 <= r <= 1.0 for r in args.rates):
        raise DeferralError(f"--rates must be fractions in [0, 1], got {args.rates}")
    if args.max_rounds < 0:
        raise DeferralError(f"--max-rounds must be 0 or more, got {args.max_rounds}")
    if not 0.0 < args.tolerance < 1.0:
        raise DeferralError(f"--tolerance must lie in (0, 1), got {args.tolerance}: 0.02 is a sane choice")
    if args.limit < 1:
        raise DeferralError(f"--limit must be at least 1 prompt, got {args.limit}")
    if not (Path(args.router) / "router.json").is_file():
        raise DeferralError(f"--router {args.router} holds no router.json: pass an export folder from `deferral export`")


def prepare_output(router: str, out: str | None) -> Path:
    """The export folder to calibrate: --router itself, or a copy of it at --out."""
    if out is None or Path(out).resolve() == Path(router).resolve():
        check_output_folder(router, "--router")
        return Path(router)
    check_output_folder(out)
    target = Path(out)
    if (target / "router.json").exists():
        return target  # a copy from an interrupted run: resume in it
    if target.exists() and any(target.iterdir()):
        raise DeferralError(f"--out {out} is a non-empty folder without a router: choose a new folder")
    shutil.copytree(router, target, dirs_exist_ok=True)
    return target


def main(argv: list[str]) -> int:
    from deferral.calibration import threshold_for_decoded_rate, threshold_for_rate
    from deferral.pair import load_pair
    from deferral.router import META_FILE, read_router_meta
    from inference.calibrate_run import calibrate_export
    from inference.decode_calibration import calibration_error, nearest
    from inference.learned import check_router, default_threshold, router_decision
    from inference.runner import encode_prompts
    from inference.tasks import check_task_name, make_task

    args = parse(build_parser(), argv)
    check_args(args)
    check_task_name(args.task)
    if args.task == "humaneval":
        raise DeferralError("calibrate on text no evaluation uses: --task stdlib (train part) or hf:<file>")
    folder = prepare_output(args.router, args.out)
    meta = read_router_meta(folder)
    cfg = decode_config(args)
    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    check_router(str(folder), pair)
    task = make_task(args.task, limit=args.limit, chat=args.chat, seed=args.seed,
                     prompt_column=args.prompt_column, reference_column=None, part=args.part)
    examples = task.examples()
    prompts = encode_prompts(pair, [e.prompt for e in examples], chat=task.chat)
    check_draft_room(prompts, pair.max_context, cfg.draft_tokens)
    alpha = float(meta.get("alpha", 0.0))
    decode = {"draft_tokens": cfg.draft_tokens, "max_new_tokens": cfg.max_new_tokens,
              "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
              "draft_confidence": cfg.draft_confidence, "draft_schedule": cfg.draft_schedule}
    settings = {"task": task.describe(), "prompts": len(prompts), "decode": decode, "alpha": alpha,
                "decision": router_decision(meta), "device": str(pair.device), "dtype": args.dtype}

    log_table = meta.get("calibration") if router_decision(meta) == "score" else None  # logged scores, plain decision
    start = [threshold_for_rate(log_table, r) for r in args.rates] if log_table else [default_threshold(meta)]
    table, points = calibrate_export(folder, meta, pair, prompts, cfg, settings, start, args.rates,
                                     max_rounds=args.max_rounds, tolerance=args.tolerance, batch_size=args.batch_size)

    print("| requested deferral rate | threshold | nearest measured rate |")
    print("|---|---|---|")
    for rate in args.rates:
        print(f"| {rate:.2f} | {threshold_for_decoded_rate(table, rate):.4f} | {nearest(points, rate)[0]['deferral_rate']:.3f} |")
    print(f"decode calibration written to {folder / META_FILE} ({len(points)} thresholds, {len(prompts)} prompts; "
          f"largest gap from a requested rate to a measured one {calibration_error(points, args.rates):.3f})", file=sys.stderr)
    return 0
