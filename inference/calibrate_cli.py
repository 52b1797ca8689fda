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

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm import tqdm

from deferral.errors import DeferralError
from deferral.outputs import check_output_folder
from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse, required_flag
from inference.generate import add_decode_arguments, check_draft_room, decode_config

PARTIAL_FILE = "decode_calibration.partial.jsonl"
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


def read_partial(path: Path, settings: dict) -> list[dict]:
    """Measurements of an interrupted run with the same settings (else none: the file is restarted)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("settings") != settings:
        return []
    return [line for line in lines[1:] if "threshold" in line]


def main(argv: list[str]) -> int:
    from deferral.calibration import decoded_rate_table, threshold_for_decoded_rate, threshold_for_rate
    from deferral.pair import load_pair
    from deferral.router import META_FILE, read_router_meta
    from inference.decode_calibration import calibrate_by_decoding, calibration_error, nearest
    from inference.learned import DECODE_CALIBRATION_KEY, check_router, default_threshold, load_learned_rule, router_decision
    from inference.runner import encode_prompts, run
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

    partial = folder / PARTIAL_FILE
    measured = read_partial(partial, settings)
    if measured:
        print(f"resuming: {len(measured)} thresholds already decoded ({partial})", file=sys.stderr)
    else:
        partial.write_text(json.dumps({"settings": settings}) + "\n")
    log_table = meta.get("calibration") if router_decision(meta) == "score" else None  # logged scores, plain decision
    start = [threshold_for_rate(log_table, r) for r in args.rates] if log_table else [default_threshold(meta)]

    # Counted in prompts decoded (an ETA after the first batch); the total is an upper bound: the
    # rounds stop once every rate is met.
    most = (len(start) + args.max_rounds * len(args.rates)) * len(prompts)
    bar = tqdm(total=most, desc="calibrate", unit="prompt", file=sys.stderr)
    bar.update(min(len(measured) * len(prompts), most))

    rule = load_learned_rule(str(folder), pair, threshold=0.0, alpha=alpha)  # loaded once; threshold set per decode

    def decode_at(threshold: float):
        rule.threshold = float(threshold)
        bar.set_postfix_str(f"threshold={threshold:.4f}")
        return run(pair, rule, prompts, cfg, batch_size=args.batch_size, on_batch=bar.update)

    def on_measured(point: dict) -> None:
        with partial.open("a") as f:
            f.write(json.dumps(point) + "\n")
        tqdm.write(f"threshold {point['threshold']:.4f}: decoded deferral rate {point['deferral_rate']:.3f} "
                   f"({point['examined']} positions examined)", file=sys.stderr)

    points = calibrate_by_decoding(decode_at, args.rates, start, max_rounds=args.max_rounds,
                                   tolerance=args.tolerance, measured=measured, on_measured=on_measured)
    bar.total = bar.n
    bar.close()
    table = decoded_rate_table(points, requested_rates=list(args.rates), **settings)
    meta[DECODE_CALIBRATION_KEY] = table
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / META_FILE)  # atomic: a kill leaves the old router.json or the new one
    partial.unlink()

    print("| requested deferral rate | threshold | nearest measured rate |")
    print("|---|---|---|")
    for rate in args.rates:
        print(f"| {rate:.2f} | {threshold_for_decoded_rate(table, rate):.4f} | {nearest(points, rate)[0]['deferral_rate']:.3f} |")
    print(f"decode calibration written to {folder / META_FILE} ({len(points)} thresholds, {len(prompts)} prompts; "
          f"largest gap from a requested rate to a measured one {calibration_error(points, args.rates):.3f})", file=sys.stderr)
    return 0
