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
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.assets import asset_path
from deferral.errors import DeferralError
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP, check_output_folder, check_tracking_store
from deferral.cli_args import add_pair_arguments, parse
from inference.config import DecodeConfig

STEPS = 7


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral demo", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    parser.add_argument("--workdir", type=str, default="runs/demo", help="where every step writes (resumable)")
    parser.add_argument("--log-docs", type=int, default=24,
                        help="at most this many standard-library files logged for training (at least 3: split by file)")
    parser.add_argument("--log-positions", type=int, default=8000, help="at most this many token positions logged")
    parser.add_argument("--router-config", type=str, default=str(asset_path("configs", "router.yaml")),
                        help="configuration of `deferral train fit`")
    parser.add_argument("--max-epochs", type=int, default=4, help="router training epochs")
    parser.add_argument("--task", type=str, default="stdlib", help="evaluation task (see deferral evaluate --help)")
    parser.add_argument("--limit", type=int, default=40, help="task examples evaluated")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per example")
    parser.add_argument("--draft-tokens", type=int, default=DecodeConfig().draft_tokens,
                        help="K: tokens drafted per target call")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="examples decoded together (latencies are of batched decoding)")
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="times each point is timed on --timing-prompts examples, interleaved with the others")
    parser.add_argument("--timing-prompts", type=int, default=8, help="examples timed (the task's first N)")
    parser.add_argument("--threads", type=int | None, default=None,
                        help="torch CPU threads of the evaluations (default: the physical cores available)")
    parser.add_argument("--hand-set-rule", type=str, default="token-v3", help="hand-set rule compared with the router")
    parser.add_argument("--alphas", type=list[float], default=[0.3, 0.6], help="α values of the hand-set rule")
    parser.add_argument("--deferral-rates", type=list[float], default=[0.2, 0.4],
                        help="deferral rates of the learned rule")
    parser.add_argument("--calibration-task", type=str, default="stdlib",
                        help="prompts the trained router's deferral rates are calibrated on while decoding "
                             "(stdlib: cuts of its train part, which the evaluation never uses)")
    parser.add_argument("--calibration-prompts", type=int, default=16, help="prompts decoded per calibration threshold")
    parser.add_argument("--calibration-tokens", type=int, default=32, help="tokens generated per calibration prompt")
    parser.add_argument("--shipped-router", type=str | None, default=str(asset_path("models", "default-router")),
                        help="router evaluated beside the one trained here (default pair only; null: skip)")
    parser.add_argument("--shipped-thresholds", type=list[float], default=[0.3, 0.4],
                        help="thresholds of the shipped router")
    parser.add_argument("--tracking-uri", type=str, default=DEFAULT_TRACKING_URI, help=TRACKING_HELP)
    return parser


def pair_flags(args) -> list[str]:
    flags = ["--device", args.device, "--dtype", args.dtype]
    for name in ("drafter", "target"):
        if getattr(args, name):
            flags += [f"--{name}", getattr(args, name)]
    return flags


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


def quality_resolution(rows: list[dict], examples: int) -> str:
    """What the quality column can tell apart: one example moves a mean score in [0, 1] by up to
    1/examples; where the target and the drafter are closer than that, it separates nothing."""
    one = 1.0 / examples
    by_rule = {r["rule"]: r["quality"] for r in rows if r["rule"] in ("target", "drafter")}
    gap = abs(by_rule.get("target", 0.0) - by_rule.get("drafter", 0.0))
    if gap < one:
        return (f"note: the target and the drafter score within one example of each other ({gap:.3f} < 1/{examples}): "
                "this quality column cannot separate the rules; read the fidelity columns (ROUGE-L vs target, "
                "target NLL) or evaluate more examples")
    return (f"one example moves a mean quality by at most {one:.3f}; the target leads the drafter by {gap:.3f}: "
            f"differences between rules smaller than {one:.3f} are within what {examples} examples resolve")


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
    from inference.report import comparison_table, latency_legend

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
    print(quality_resolution(rows, args.limit))
    print(f"full tables: {evaluation / 'tables.md'}; plots: {evaluation / 'quality_vs_latency.png'}, "
          f"{evaluation / 'quality_vs_deferral.png'}; total {time.perf_counter() - start:.0f} s")
    return 0
