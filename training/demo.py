"""`deferral demo`: the whole pipeline on the embedded default pair, end to end.

1. log drafter/target distributions over a slice of the standard library (`deferral log`);
2. train a router on them (`deferral train fit --config configs/router.yaml`);
3. export it (`deferral export`);
4. calibrate its deferral rates while decoding (`deferral calibrate`, on stdlib train-part cuts), so
   the rates the table asks for are the rates decoding reaches;
5. evaluate the learned speculative cascade against a hand-set rule, lossless speculative decoding,
   the target and the drafter on held-out standard-library code (`deferral evaluate`: chrF of the
   continuation against the file's real next lines, where the target beats the drafter clearly);
6. evaluate the shipped router (models/default-router) on the same examples, when the pair is the
   default one it was trained for (the reference rows are taken from step 5, and timed again with
   the shipped router's rows);
7. print one table: what the router trained here in a minute does, next to the shipped one.

Every step writes under --workdir and resumes when rerun. Each step runs as its own `deferral`
process, exactly as a user would type it (the commands are printed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.assets import asset_path
from deferral.errors import DeferralError
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP, check_output_folder, check_tracking_store
from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse
from inference.config import DecodeConfig

STEPS = 7


@dataclass
class DemoOptions:
    workdir: str = flag("runs/demo", "where every step writes (resumable)")
    log_docs: int = flag(24, "at most this many standard-library files logged for training (at least 3: split by file)")
    log_positions: int = flag(8000, "at most this many token positions logged")
    router_config: str = flag(str(asset_path("configs", "router.yaml")), "configuration of `deferral train fit`")
    max_epochs: int = flag(4, "router training epochs")
    task: str = flag("stdlib", "evaluation task (see deferral evaluate --help)")
    limit: int = flag(40, "task examples evaluated")
    max_new_tokens: int = flag(64, "tokens generated per example")
    draft_tokens: int = flag(DecodeConfig().draft_tokens, "K: tokens drafted per target call")
    batch_size: int = flag(8, "examples decoded together (latencies are of batched decoding)")
    timing_repeats: int = flag(3, "times each point is timed on --timing-prompts examples, interleaved with the others")
    timing_prompts: int = flag(8, "examples timed (the task's first N)")
    threads: int | None = flag(None, "torch CPU threads of the evaluations (default: the physical cores available)")
    hand_set_rule: str = flag("token-v3", "hand-set rule compared with the router")
    alphas: list[float] = flag([0.3, 0.6], "α values of the hand-set rule")
    deferral_rates: list[float] = flag([0.2, 0.4], "deferral rates of the learned rule")
    calibration_task: str = flag("stdlib", "prompts the trained router's deferral rates are calibrated on while "
                                           "decoding (stdlib: cuts of its train part, which the evaluation never uses)")
    calibration_prompts: int = flag(16, "prompts decoded per calibration threshold")
    calibration_tokens: int = flag(32, "tokens generated per calibration prompt")
    shipped_router: str | None = flag(str(asset_path("models", "default-router")),
                                      "router evaluated beside the one trained here (default pair only; null: skip)")
    shipped_thresholds: list[float] = flag([0.4366, 1.1119], "thresholds of the shipped router (its calibration table's rates 0.2 and 0.16)")
    tracking_uri: str = flag(DEFAULT_TRACKING_URI, TRACKING_HELP)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral demo", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, DemoOptions)
    return parser


def pair_flags(args) -> list[str]:
    flags = ["--device", args.device, "--dtype", args.dtype]
    for name in ("drafter", "target"):
        if getattr(args, name):
            flags += [f"--{name}", getattr(args, name)]
    return flags


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


def evaluate_flags(args) -> list[str]:
    """The decoding and timing flags both evaluations share."""
    flags = ["--task", args.task, "--limit", str(args.limit), "--modes", "[speculative]",
             "--draft-tokens", str(args.draft_tokens), "--batch-size", str(args.batch_size),
             "--max-new-tokens", str(args.max_new_tokens), "--timing-repeats", str(args.timing_repeats),
             "--timing-prompts", str(args.timing_prompts), "--tracking-uri", args.tracking_uri]
    return flags + (["--threads", str(args.threads)] if args.threads else [])


def step(number: int, title: str, argv: list[str]) -> None:
    """Run one `deferral` command as a child process, streaming its output and progress bars."""
    print(f"\n[{number}/{STEPS}] {title}\n$ deferral {' '.join(argv)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deferral.cli", *argv])
    if done.returncode != 0:
        raise DeferralError(f"step {number} ({title}) failed with exit status {done.returncode}: see its message above, "
                            "fix it and rerun `deferral demo` (finished steps are kept)")
    print(f"[{number}/{STEPS}] done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    from inference.report import comparison_table, latency_legend, references, resolution_note

    args = parse(build_parser(), argv)
    if not Path(args.router_config).is_file():
        raise DeferralError(f"router config {args.router_config} does not exist: pass --router-config FILE")
    check_output_folder(args.workdir, "--workdir")
    check_tracking_store(args.tracking_uri)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logs, train_root, router, evaluation = work / "log", work / "router-training", work / "router", work / "evaluate"
    evaluation_shipped = work / "evaluate-shipped"
    start = time.perf_counter()

    step(1, "log a slice of the standard library", [
        "log", *pair_flags(args), "--data", "stdlib:train", "--out", str(logs),
        "--max-docs", str(args.log_docs), "--max-positions", str(args.log_positions), "--tracking-uri", args.tracking_uri,
    ])
    if not (router / "router.json").is_file():
        step(2, "train the router", [
            "train", "fit", "--config", args.router_config, "--data.path", str(logs),
            "--trainer.max_epochs", str(args.max_epochs), "--trainer.default_root_dir", str(train_root),
            "--mlflow.tracking_uri", args.tracking_uri,
        ])
        step(3, "export the router", [
            "export", "--checkpoint", str(train_root / "checkpoints" / "best.ckpt"), "--out", str(router),
        ])
    else:
        print(f"\n[2-3/{STEPS}] router already exported in {router}", file=sys.stderr)
    if "decode_calibration" not in json.loads((router / "router.json").read_text()):
        step(4, "calibrate the router's deferral rates while decoding", [
            "calibrate", *pair_flags(args), "--router", str(router), "--task", args.calibration_task,
            "--limit", str(args.calibration_prompts), "--max-new-tokens", str(args.calibration_tokens),
            "--draft-tokens", str(args.draft_tokens), "--batch-size", str(args.batch_size),
            "--rates", json.dumps(args.deferral_rates),
        ])
    else:
        print(f"\n[4/{STEPS}] deferral rates already calibrated in {router / 'router.json'}", file=sys.stderr)
    rule = args.hand_set_rule
    step(5, f"evaluate the learned cascade on {args.task}", [
        "evaluate", *pair_flags(args), *evaluate_flags(args), "--rules", f"[{rule}, learned]",
        "--alphas", json.dumps({rule: args.alphas}), "--router", str(router),
        "--deferral-rates", json.dumps(args.deferral_rates), "--out", str(evaluation),
    ])
    rows = read_rows(evaluation)
    shipped = args.shipped_router if args.shipped_router and not (args.drafter or args.target) else None
    if shipped:
        step(6, "evaluate the shipped router on the same examples", [
            "evaluate", *pair_flags(args), *evaluate_flags(args), "--rules", "[learned]", "--router", shipped,
            "--thresholds", json.dumps(args.shipped_thresholds), "--out", str(evaluation_shipped),
            "--references-from", str(evaluation),
        ])
        rows += [{**r, "rule": "learned (shipped)"} for r in read_rows(evaluation_shipped) if r["rule"] == "learned"]
    else:
        print(f"\n[6/{STEPS}] shipped router skipped ({'--shipped-router null' if not args.shipped_router else 'it is made for the default pair only'})",
              file=sys.stderr)
    timed_apart = "; learned (shipped) is timed against the target of its own run" if shipped else ""
    print(f"\n[7/{STEPS}] comparison on {args.limit} {args.task} examples ({rows[0]['quality_key']}{timed_apart})\n")
    print(comparison_table(rows))
    print(latency_legend(rows))
    print(resolution_note(rows, references(rows).get("target")))
    print(f"full tables: {evaluation / 'tables.md'}; plots: {evaluation / 'quality_vs_latency.png'}, "
          f"{evaluation / 'quality_vs_deferral.png'}; total {time.perf_counter() - start:.0f} s")
    return 0
