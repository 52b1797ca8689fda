"""`deferral log`: run drafter and target over a corpus and write per-token features and labels.

The output folder is resumable: rerun the same command after any interruption (kill -9 included)
and it continues after the last finished shard; the finished dataset equals an uninterrupted run's.
Format: training/logs/logged_data.py; guide: docs/logging.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse, required_flag
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP, check_output_folder, check_tracking_store, tracking_off
from training.logs.log_job import lock_out, make_job, require_documents, track
from training.logs.log_pipeline import LOG_FLAGS_SKIPPED, LogConfig, feature_spec


@dataclass
class CorpusOptions:
    data: str = required_flag("corpus: stdlib[:train|heldout|all], a .txt/.jsonl/.parquet file (or glob, or a,b list), "
                              "a folder of text/source files, or a Hugging Face dataset name[/config][:split]")
    out: str = required_flag("output folder (rerun with the same flags to resume)")
    text_column: str = flag("text", "text field of .jsonl/.parquet/HF rows")
    hf_config: str | None = flag(None, "Hugging Face dataset config name")
    txt_docs: str = flag("paragraph", "how a .txt file splits into documents: paragraph (blank lines), line or file")


@dataclass
class JobOptions:
    docs_per_shard: int = flag(16, "documents per shard: the unit of resumption, and of the first total and ETA")
    max_docs: int | None = flag(None, "stop after this many documents")
    doc_chars: int | None = flag(None, "keep the first N characters of each document (spreads a position budget "
                                       "over more documents)")
    max_positions: int | None = flag(None, "stop after this many positions (split evenly across processes)")
    generator: str | None = flag(None, "on-policy/cascade: who writes continuations: target, or a cascade rule "
                                       "(speculative, chow, opt, ...); default: target on-policy, speculative in "
                                       "cascade mode")
    compile: str = flag("auto", "torch.compile the feature and label step (a one-off compile cost, then about twice "
                                "as fast): on, off, or auto = on for vocabularies of 4096 tokens or more")
    devices: int = flag(1, "processes (Lightning DDP predict loop) when > 1")
    accelerator: str = flag("auto", "Lightning accelerator for --devices > 1")
    tracking_uri: str = flag(DEFAULT_TRACKING_URI, TRACKING_HELP)
    experiment: str = flag("deferral-log", "MLflow experiment name")
    no_tracking: bool = flag(False, "do not record the run in MLflow (the older spelling of --tracking-uri none)")
    no_progress: bool = flag(False, "hide the progress bar")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral log", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, CorpusOptions)
    add_config_flags(parser, LogConfig, skip=LOG_FLAGS_SKIPPED)
    add_config_flags(parser, JobOptions)
    return parser


def main(argv: list[str]) -> int:
    args = parse(build_parser(), argv)
    args.no_tracking = args.no_tracking or tracking_off(args.tracking_uri)  # --no-tracking: the older spelling
    check_output_folder(args.out)  # before any document is read or model loaded
    if not args.no_tracking:
        check_tracking_store(args.tracking_uri)
    if args.devices > 1:
        from training.logs.log_distributed import main_distributed

        return main_distributed(args)
    from deferral.pair import load_pair

    job = make_job(args)
    require_documents(job.corpus)
    with lock_out(job.out):  # held from run.json to the finished dataset
        pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
        job.use_pair_settings(pair, args.compile)
        job.prepare(pair)
        stats = job.run(pair, show_progress=not args.no_progress)
        progress = job.finalize(feature_spec(pair, job.cfg.hidden, job.cfg.mode).dim)
    track(args, job, stats, progress)
    print(f"logged {progress['positions']} positions in {progress['shards']} shard(s) to {args.out} "
          f"({stats['new_positions']} new, {stats['positions_per_s']:.0f} positions/s)", file=sys.stderr)
    return 0
