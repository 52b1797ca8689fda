"""`deferral evaluate`: sweep every rule's knob on a task and write the cost-quality frontier.

Writes into --out: results.jsonl (one row per rule, mode, knob and K, appended as each completes),
generations.jsonl (the decoded texts), timings.jsonl (one line per repeat of the timing stage, which
times every point interleaved with the others, --timing-repeats times on --timing-prompts prompts),
tables.md, quality_vs_latency.png, quality_vs_deferral.png, and run.json (the setup; a rerun with the
same setup skips finished rows and repeats, another setup is refused). The same results go to MLflow
(one run per output folder, resumed on rerun).
"""

from __future__ import annotations

from dataclasses import dataclass

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.errors import DeferralError
from deferral.outputs import (
    DEFAULT_TRACKING_URI,
    TRACKING_HELP,
    check_output_folder,
    check_tracking_store,
    tracking_off,
)
from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse
from deferral.rules import HAND_SET_RULES
from inference.evaluate_run import evaluate
from inference.generate import add_decode_arguments
from inference.tasks import TASK_NAMES, check_limit, check_task_name


@dataclass
class SweepOptions:
    """What is swept, on which task."""

    task: str = flag("humaneval", f"one of: {', '.join(TASK_NAMES)}")
    limit: int | None = flag(None, "use the task's first N examples")
    raw_prompts: bool = flag(False, "humaneval: give raw function stubs even when the target has a chat template")
    unsafe_allow_network: bool = flag(
        False, "humaneval: where this machine cannot isolate generated code (no namespaces), run it anyway, with "
               "network, processes and files of this user within its reach")
    prompt_column: str = flag("prompt", "hf task: the prompt column")
    reference_column: str = flag("reference", "hf task: the reference column")
    rules: list[str] = flag(list(HAND_SET_RULES),
                            "rules to sweep (target, drafter and lossless speculative are always included)")
    modes: list[str] = flag(["speculative", "sequential"], "speculative and/or sequential cascades")
    draft_tokens_list: list[int] | None = flag(None, "K values for speculative points (default: --draft-tokens)")
    alpha_points: int = flag(5, "α values per hand-set rule, spread over its range")
    alphas: dict[str, list[float]] | None = flag(
        None, "explicit α values per rule, e.g. {chow: [0.2, 0.5]} (overrides --alpha-points)")
    router: str | None = flag(None, "router export folder for the learned rule")
    deferral_rates: list[float] | None = flag(
        None, "learned rule: deferral rates to sweep (the router's calibration picks thresholds)")
    thresholds: list[float] | None = flag(None, "learned rule: score thresholds to sweep (instead of --deferral-rates)")


@dataclass
class RunOptions:
    """How the sweep runs, is timed and recorded."""

    threads: int | None = flag(None, "torch CPU threads (default: the physical cores this process may run on)")
    timing_repeats: int = flag(3, "after the sweep, time every point this many times on --timing-prompts prompts, "
                                  "interleaved with the others (0: relative latency from the sweep's single pass)")
    timing_prompts: int = flag(8, "the task's first N prompts are timed (all of them when there are fewer)")
    no_fidelity: bool = flag(False, "skip the target NLL / ROUGE-L-vs-target metrics (saves one target pass per prompt)")
    out: str = flag("runs/evaluate", "output folder (resumed when it exists)")
    references_from: str | None = flag(
        None, "an output folder of the same setup (its router aside): take its target, drafter and lossless "
              "speculative rows and texts instead of decoding them again (still timed here)")
    tracking_uri: str = flag(DEFAULT_TRACKING_URI, TRACKING_HELP)
    experiment: str = flag("deferral-evaluate", "MLflow experiment name")
    no_mlflow: bool = flag(False, "do not log to MLflow (the older spelling of --tracking-uri none)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral evaluate", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, SweepOptions)
    add_decode_arguments(parser)
    add_config_flags(parser, RunOptions)
    return parser


def main(argv: list[str]) -> int:
    args = parse(build_parser(), argv)
    args.no_mlflow = args.no_mlflow or tracking_off(args.tracking_uri)  # --no-mlflow: the older spelling
    if args.threads is not None and args.threads < 1:
        raise DeferralError(f"--threads must be at least 1, got {args.threads}")
    if args.timing_repeats < 0 or args.timing_prompts < 1:
        raise DeferralError(f"--timing-repeats must be >= 0 and --timing-prompts >= 1, got {args.timing_repeats} "
                            f"and {args.timing_prompts}")
    check_limit(args.limit)
    check_task_name(args.task)
    check_output_folder(args.out)  # before any decoding
    if not args.no_mlflow:
        check_tracking_store(args.tracking_uri)
    if args.task == "humaneval":  # refuse unisolated generated code now, not after hours of decoding
        from inference.tasks.sandbox import require_isolation

        require_isolation(args.unsafe_allow_network)
    import torch

    from inference.timing import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads())
    try:
        return evaluate(args)  # inference/evaluate_run.py
    finally:
        torch.set_num_threads(before)  # the caller's setting, when called in-process
