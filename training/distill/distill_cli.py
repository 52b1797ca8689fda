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
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.errors import DeferralError
from deferral.outputs import DEFAULT_TRACKING_URI, TRACKING_HELP
from deferral.cli_args import add_config_flags, flag, parse


@dataclass
class DistillOptions:
    target: str | None = flag(None, "target: Hugging Face id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    device: str = flag("cpu", "cpu, cuda, cuda:N or auto")
    dtype: str = flag("float32", "dtype the target is loaded in")
    out: str = flag("runs/distill", "run folder: data cache, checkpoints, metrics")
    export: str | None = flag(None, "write the drafter here as a Hugging Face folder")
    seed: int = flag(0, "seeds data order, splits, sampling and initialisation")
    # corpus
    data: list[str] = flag(["stdlib", "site-packages"],
                           "corpus folders, or stdlib / site-packages / docs (this Python's files, /usr/share/doc)")
    tokenizer: str | None = flag(None, "tokenizer folder for the corpus stage (default: the target's); must equal the target's")
    max_code_chars: int = flag(200_000_000, "cap on code characters read")
    max_prose_chars: int = flag(100_000_000, "cap on prose characters read")
    min_english: float = flag(0.6, "share of letters in words a prose text needs")
    heldout_fraction: float = flag(0.03, "share of packages held out (by name hash)")
    heldout_units: list[str] = flag([], "packages/modules always held out")
    block_size: int = flag(512, "tokens per training row")
    # on-policy
    chat_prompts: int = flag(0, "chat-formatted prompts the target answers")
    heldout_chat_prompts: int = flag(0, "chat prompts from held-out text (evaluation)")
    raw_prompts: int = flag(0, "corpus prefixes the target continues")
    prefix_tokens: int = flag(64, "length of each corpus prefix")
    max_prompt_tokens: int = flag(384, "longer chat prompts are skipped")
    new_tokens: int = flag(256, "tokens the target generates per prompt")
    generate_batch_size: int = flag(256, "prompts generated together")
    onpolicy_temperature: float = flag(0.7, "target sampling temperature (0 = greedy)")
    mix: dict[str, float] = flag({"code": 1.0, "prose": 1.0, "onpolicy": 1.0},
                                 "repeat factor of each training source (0.5 = half its blocks, 2 = twice)")
    # drafter
    init: str | None = flag(None, "start from this Hugging Face folder instead")
    layers: int = flag(6, "decoder layers")
    hidden: int = flag(256, "hidden width")
    intermediate: int = flag(768, "MLP width")
    heads: int = flag(4, "attention heads")
    kv_heads: int = flag(2, "key/value heads (grouped-query attention)")
    # optimisation
    steps: int = flag(1000, "optimizer steps in all (the cosine schedule's length)")
    batch_size: int = flag(64, "rows per step")
    lr: float = flag(2e-3, "peak learning rate")
    warmup_steps: int = flag(100, "linear warm-up steps")
    weight_decay: float = flag(0.1, "AdamW weight decay")
    topk: int | None = flag(None, "KL to the target's top-k only (default: full)")
    precision: str = flag("32-true", "Lightning precision, e.g. bf16-mixed on GPU")
    max_minutes: float | None = flag(None, "stop fitting once the command has run this many minutes (rerun to resume)")
    val_every: int = flag(500, "validate every N steps")
    val_blocks: int = flag(64, "held-out blocks per set used during fitting")
    eval_blocks: int = flag(256, "held-out blocks per set in the final report (--measure-only: 0 = cost only)")
    checkpoint_every: int = flag(500, "save the `last` checkpoint every N steps")
    # tracking and modes
    tracking_uri: str = flag(DEFAULT_TRACKING_URI, TRACKING_HELP)
    experiment: str = flag("distill", "MLflow experiment name")
    prepare_only: bool = flag(False, "build the corpus stage and stop")
    measure_only: bool = flag(False, "measure --drafter on the held-out sets and stop")
    drafter: str | None = flag(None, "drafter to measure (--measure-only)")
    threads: int = flag(2, "CPU threads for the cost measurement")
    log_run: str | None = flag(None, "copy a finished run folder into MLflow and stop")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="deferral distill", description=__doc__, exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_config_flags(p, DistillOptions)
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
    # the stages load Lightning: only once the flags are known good (--help stays light)
    from training.distill.distill_stages import fit_and_report, measure, prepare_corpus, prepare_onpolicy

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
