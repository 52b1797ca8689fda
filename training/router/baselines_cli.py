"""`deferral baselines`: the router against logistic regression and the paper's rules, per label.

    deferral baselines --data logs/stdlib --router runs/router/export [--targets gap01,mismatch]
                       [--alpha 0.5] [--calibration isotonic] [--out baselines.md]

Uses the router's own document splits (seed and fractions from router.json): logistic regression
trains on the train documents and is calibrated on the validation documents; every method is scored
on the test documents. Prints one markdown table (AUROC, AP per target) and writes it to --out.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.cli_args import add_config_flags, flag, required_flag
from deferral.labels import ROUTER_TARGETS
from training.router.datamodule import DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION


@dataclass
class BaselinesOptions:
    data: str = required_flag("a `deferral log` output folder")
    router: str | None = flag(None, "router export folder to compare (its splits)")
    targets: str | None = flag(None, f"comma-separated targets ({', '.join(ROUTER_TARGETS)}); default: the router's target")
    alpha: float = flag(0.5, "alpha of the fixed-alpha OPT score")
    whole_log: bool = flag(False, "score every document (a log the router never trained on, e.g. stdlib:heldout); "
                                  "logistic regression, which needs training documents, is skipped")
    calibration: str = flag("isotonic", "isotonic or sigmoid (logistic regression)")
    split_seed: int = flag(DEFAULT_SPLIT_SEED, "document split seed when no --router is given")
    val_fraction: float = flag(DEFAULT_VAL_FRACTION, "validation share when no --router is given")
    test_fraction: float = flag(DEFAULT_TEST_FRACTION, "test share when no --router is given")
    out: str | None = flag(None, "write the markdown table (and .json) here")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral baselines", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_config_flags(parser, BaselinesOptions)
    return parser


def main(argv: list[str]) -> int:
    from deferral.outputs import check_output_file
    from deferral.cli_args import parse

    args = parse(build_parser(), argv)
    if args.out:  # before the comparison, not after it
        check_output_file(args.out)
    from training.router.baselines_run import compare

    table, record = compare(args)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"table written to {out}", file=sys.stderr)
    return 0
