"""`deferral distill`: distil a small drafter for a target (knowledge distillation, Lightning).

Stages, each cached in the run folder (`--out`) so a rerun of the same command resumes:
1. corpus   code and English prose from local folders, split by package into train / held-out; token blocks.
2. on-policy  the target's own replies to chat-formatted prompts and continuations of corpus prefixes.
3. fit      KL(target || drafter) per token, the target computed on the fly; checkpoints; resumes from "last".
4. report   teacher-forced greedy agreement on each held-out set; a Hugging Face folder (`--export`) with a card.

`--measure-only --drafter DIR` measures an existing drafter on the same held-out sets, plus its per-token
decode cost relative to the target (batch 1, KV-cached, `--threads` CPU threads).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.errors import DeferralError
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP
from deferral.cli_args import parse
from training.distill.distill_stages import fit_and_report, measure, prepare_corpus, prepare_onpolicy


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="deferral distill", description=__doc__, exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    p.add_argument("--target", type=str | None, default=None,
                   help="target: Hugging Face id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", type=str, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", type=str, default="float32", help="dtype the target is loaded in")
    p.add_argument("--out", type=str, default="runs/distill", help="run folder: data cache, checkpoints, metrics")
    p.add_argument("--export", type=str | None, default=None, help="write the drafter here as a Hugging Face folder")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, splits, sampling and initialisation")
    # corpus
    p.add_argument("--data", type=list[str], default=["stdlib", "site-packages"],
                   help="corpus folders, or stdlib / site-packages / docs (this Python's files, /usr/share/doc)")
    p.add_argument("--tokenizer", type=str | None, default=None,
                   help="tokenizer folder for the corpus stage (default: the target's); must equal the target's")
    p.add_argument("--max-code-chars", type=int, default=200_000_000, help="cap on code characters read")
    p.add_argument("--max-prose-chars", type=int, default=100_000_000, help="cap on prose characters read")
    p.add_argument("--min-english", type=float, default=0.6, help="share of letters in words a prose text needs")
    p.add_argument("--heldout-fraction", type=float, default=0.03, help="share of packages held out (by name hash)")
    p.add_argument("--heldout-units", type=list[str], default=[], help="packages/modules always held out")
    p.add_argument("--block-size", type=int, default=512, help="tokens per training row")
    # on-policy
    p.add_argument("--chat-prompts", type=int, default=0, help="chat-formatted prompts the target answers")
    p.add_argument("--heldout-chat-prompts", type=int, default=0, help="chat prompts from held-out text (evaluation)")
    p.add_argument("--raw-prompts", type=int, default=0, help="corpus prefixes the target continues")
    p.add_argument("--prefix-tokens", type=int, default=64, help="length of each corpus prefix")
    p.add_argument("--max-prompt-tokens", type=int, default=384, help="longer chat prompts are skipped")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens the target generates per prompt")
    p.add_argument("--generate-batch-size", type=int, default=256, help="prompts generated together")
    p.add_argument("--onpolicy-temperature", type=float, default=0.7, help="target sampling temperature (0 = greedy)")
    p.add_argument("--mix", type=dict[str, float], default={"code": 1.0, "prose": 1.0, "onpolicy": 1.0},
                   help="repeat factor of each training source (0.5 = half its blocks, 2 = twice)")
    # drafter
    p.add_argument("--init", type=str | None, default=None, help="start from this Hugging Face folder instead")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    # optimisation
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in all (the cosine schedule's length)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--topk", type=int | None, default=None, help="KL to the target's top-k only (default: full)")
    p.add_argument("--precision", type=str, default="32-true", help="Lightning precision, e.g. bf16-mixed on GPU")
    p.add_argument("--max-minutes", type=float | None, default=None, help="stop fitting once the command has run this many minutes (rerun to resume)")
    p.add_argument("--val-every", type=int, default=500, help="validate every N steps")
    p.add_argument("--val-blocks", type=int, default=64, help="held-out blocks per set used during fitting")
    p.add_argument("--eval-blocks", type=int, default=256,
                   help="held-out blocks per set in the final report (--measure-only: 0 = cost only)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="save the `last` checkpoint every N steps")
    # tracking and modes
    p.add_argument("--tracking-uri", type=str, default=DEFAULT_TRACKING_URI, help=TRACKING_HELP)
    p.add_argument("--experiment", type=str, default="distill", help="MLflow experiment name")
    p.add_argument("--prepare-only", action="store_true", help="build the corpus stage and stop")
    p.add_argument("--measure-only", action="store_true", help="measure --drafter on the held-out sets and stop")
    p.add_argument("--drafter", type=str | None, default=None, help="drafter to measure (--measure-only)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the cost measurement")
    p.add_argument("--log-run", type=str | None, default=None, help="copy a finished run folder into MLflow and stop")
    return p


def _check_args(args) -> None:
    for name in ("steps", "batch_size", "block_size", "val_blocks", "new_tokens", "generate_batch_size"):
        if getattr(args, name) < 1:
            raise DeferralError(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_blocks < 0:
        raise DeferralError("--eval-blocks must be at least 0 (0: --measure-only skips agreement)")
    if not 0 <= args.heldout_fraction < 1:
        raise DeferralError("--heldout-fraction must be in [0, 1)")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise DeferralError("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")
    unknown = set(args.mix) - {"code", "prose", "onpolicy"}
    if unknown:
        raise DeferralError(f"--mix has unknown sources {sorted(unknown)}: use code, prose, onpolicy")


def main(argv: list[str]) -> int:
    started = time.time()  # --max-minutes counts from here, data stages included
    args = parse(build_parser(), argv)
    if args.log_run:
        from training.distill.distill_tracking import log_run

        print(json.dumps({"mlflow_run_id": log_run(args.log_run, args.tracking_uri, args.experiment)}))
        return 0
    _check_args(args)
    import lightning as L

    L.seed_everything(args.seed, workers=True, verbose=False)
    torch.backends.cuda.matmul.allow_tf32 = True
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    if args.measure_only:
        print(json.dumps(measure(args, run)))
        return 0
    from deferral.default_target import default_target_gguf
    from deferral.pair import load_model

    if args.prepare_only and args.tokenizer:
        from transformers import AutoTokenizer

        corpus = prepare_corpus(args, AutoTokenizer.from_pretrained(args.tokenizer), run / "data" / "corpus.pt")
        print(json.dumps(corpus["stats"], indent=1))
        return 0
    target = load_model(args.target or str(default_target_gguf()), args.device, args.dtype, role="target")
    if args.tokenizer:
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(args.tokenizer).get_vocab() != target.tokenizer.get_vocab():
            raise DeferralError(f"--tokenizer {args.tokenizer} differs from the target's: drop --tokenizer")
    corpus = prepare_corpus(args, target.tokenizer, run / "data" / "corpus.pt")
    print(json.dumps(corpus["stats"]), file=sys.stderr)
    if args.prepare_only:
        return 0
    onpolicy = prepare_onpolicy(args, target, corpus, run / "data" / "onpolicy.pt")
    print(json.dumps(onpolicy["stats"]), file=sys.stderr)
    summary = fit_and_report(args, argv, target, corpus, onpolicy, run, started)
    print(json.dumps(summary["final"]))  # one line, last: scripts read it
    return 0
