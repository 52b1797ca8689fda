"""`deferral log`: run drafter and target over a corpus and write per-token features and labels.

The output folder is resumable: rerun the same command after any interruption (kill -9 included)
and it continues after the last finished shard; the finished dataset equals an uninterrupted run's.
Format: training/logs/logged_data.py; guide: docs/logging.md.
"""

from __future__ import annotations

import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.cli_args import add_config_flags, add_pair_arguments, parse
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP, check_output_folder, check_tracking_store, tracking_off
from training.logs.log_job import lock_out, make_job, require_documents, track
from training.logs.log_pipeline import LOG_FLAGS_SKIPPED, LogConfig, feature_spec


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral log", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    parser.add_argument("--data", type=str, required=True,
                        help="corpus: stdlib[:train|heldout|all], a .txt/.jsonl/.parquet file (or glob, or a,b list), "
                             "a folder of text/source files, or a Hugging Face dataset name[/config][:split]")
    parser.add_argument("--text-column", type=str, default="text", help="text field of .jsonl/.parquet/HF rows")
    parser.add_argument("--hf-config", type=str | None, default=None, help="Hugging Face dataset config name")
    parser.add_argument("--txt-docs", type=str, default="paragraph",
                        help="how a .txt file splits into documents: paragraph (blank lines), line or file")
    parser.add_argument("--out", type=str, required=True, help="output folder (rerun with the same flags to resume)")
    add_config_flags(parser, LogConfig, skip=LOG_FLAGS_SKIPPED)
    parser.add_argument("--docs-per-shard", type=int, default=16,
                        help="documents per shard: the unit of resumption, and of the first total and ETA")
    parser.add_argument("--max-docs", type=int | None, default=None, help="stop after this many documents")
    parser.add_argument("--doc-chars", type=int | None, default=None,
                        help="keep the first N characters of each document (spreads a position budget over more documents)")
    parser.add_argument("--max-positions", type=int | None, default=None,
                        help="stop after this many positions (split evenly across processes)")
    parser.add_argument("--generator", type=str | None, default=None,
                        help="on-policy/cascade: who writes continuations: target, or a cascade rule (speculative, "
                             "chow, opt, ...); default: target on-policy, speculative in cascade mode")
    parser.add_argument("--compile", type=str, default="auto",
                        help="torch.compile the feature and label step (a one-off compile cost, then about twice as "
                             "fast): on, off, or auto = on for vocabularies of 4096 tokens or more")
    parser.add_argument("--devices", type=int, default=1, help="processes (Lightning DDP predict loop) when > 1")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning accelerator for --devices > 1")
    parser.add_argument("--tracking-uri", type=str, default=DEFAULT_TRACKING_URI, help=TRACKING_HELP)
    parser.add_argument("--experiment", type=str, default="deferral-log", help="MLflow experiment name")
    parser.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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
