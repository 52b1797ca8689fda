"""The `deferral` console script: one entry point, one module per subcommand, imported lazily.

Each subcommand module exposes `main(argv: list[str]) -> int`. Lazy imports keep `deferral generate`
free of lightning, mlflow and datasets, and keep `--help` fast.
"""

from __future__ import annotations

import importlib
import sys

from deferral.errors import exit_code_of

SUBCOMMANDS = {
    "generate": ("inference.generate", "decode prompts with a speculative cascade under any rule"),
    "log": ("training.logs.log_cli", "log drafter/target distributions over a corpus as features and labels"),
    "train": ("training.router.cli", "train the router (LightningCLI: fit/validate/test)"),
    "baselines": ("training.router.baselines_cli", "logistic regression and the paper's rules on the router's splits"),
    "export": ("training.router.export", "turn a training checkpoint or MLflow run into a router export folder"),
    "calibrate": ("inference.calibrate_cli", "measure a router's deferral rates while decoding; store the thresholds"),
    "serve": ("inference.serve_cli", "an OpenAI-compatible HTTP server decoding with speculative cascades"),
    "evaluate": ("inference.evaluate_cli", "sweep every rule's knob on a task: cost-quality tables and plots"),
    "distill": ("training.distill.distill_cli", "distil a small drafter for a target"),
    "demo": ("training.demo", "the whole pipeline end to end on the embedded default pair"),
}


def usage() -> str:
    lines = ["usage: deferral COMMAND [--config FILE.yaml] [flags]   (deferral COMMAND --help for flags)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command '{name}': choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as exc:
        print(f"error: command '{name}' is unavailable ({exc}): reinstall with `pip install -e .`", file=sys.stderr)
        return 2
    try:
        return exit_code_of(lambda: int(module.main(rest) or 0))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it applies", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
