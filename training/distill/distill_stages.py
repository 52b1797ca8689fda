"""The stages of `deferral distill` as plain functions: corpus blocks, on-policy blocks, the fit with
its report and export, and the measurement of an existing drafter (see training/distill/distill_cli.py
for the command and its flags; `args` is its parsed namespace)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Timer

from deferral.errors import DeferralError
from deferral.pair import pad_id_of


def _separator(tokenizer) -> int:
    """The token between two documents packed into one training row: where a text ends, so EOS first
    (a drafter learns to predict the end of a reply); generation stops at it too."""
    for candidate in (tokenizer.eos_token_id, tokenizer.pad_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def prepare_corpus(args, tokenizer, path: Path) -> dict:
    """Stage 1, cached in `path`: token blocks per split and kind, and chat prompts."""
    from training.distill.distill_data import chat_prompts, pack_blocks, read_documents, resolve_roots, split_documents, tokenize

    if path.is_file():
        return torch.load(path, weights_only=True)
    started = time.time()
    roots = resolve_roots(args.data)
    docs = read_documents(roots, {"code": args.max_code_chars, "prose": args.max_prose_chars}, args.min_english)
    train, heldout = split_documents(docs, args.heldout_fraction, args.heldout_units)
    if not any(d.kind == "code" for d in train) and not any(d.kind == "prose" for d in train):
        raise DeferralError(f"the corpus {args.data} gave no training text: add folders with .py/.md/.rst/.txt files")
    sep = _separator(tokenizer)
    corpus: dict = {"stats": {"roots": [str(r) for r in roots]}}
    for split, split_docs in (("train", train), ("heldout", heldout)):
        for kind in ("code", "prose"):
            texts = [d.text for d in split_docs if d.kind == kind]
            ids = tokenize(tokenizer, texts)
            blocks = pack_blocks(ids, args.block_size, sep)
            corpus[f"{split}_{kind}"] = blocks
            corpus["stats"][f"{split}_{kind}"] = {
                "documents": len(texts), "units": len({d.unit for d in split_docs if d.kind == kind}),
                "tokens": int(sum(len(i) for i in ids)), "blocks": int(blocks.shape[0])}
    corpus["stats"]["heldout_units"] = sorted({d.unit for d in heldout})[:200]
    gen = torch.Generator().manual_seed(args.seed)
    corpus["chat_train"] = chat_prompts(train, args.chat_prompts, gen)
    corpus["chat_heldout"] = chat_prompts(heldout, args.heldout_chat_prompts, gen)
    corpus["stats"]["seconds"] = round(time.time() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(corpus, path)
    return corpus


def prepare_onpolicy(args, target, corpus: dict, path: Path) -> dict:
    """Stage 2, cached in `path`: blocks of the target's own continuations (train and held-out chat)."""
    from training.distill.distill_data import pack_blocks, raw_prefixes
    from training.distill.distill_onpolicy import chat_encode, continuations

    if path.is_file():
        return torch.load(path, weights_only=True)
    started = time.time()
    tok = target.tokenizer
    gen = torch.Generator().manual_seed(args.seed + 1)
    sep = _separator(tok)
    eos = sorted({i for i in (tok.eos_token_id, sep) if i is not None})
    train_pool = torch.cat([corpus["train_code"], corpus["train_prose"]])
    prompts = chat_encode(tok, corpus["chat_train"], args.max_prompt_tokens)
    prompts += raw_prefixes(train_pool, args.raw_prompts, args.prefix_tokens, gen)
    heldout_prompts = chat_encode(tok, corpus["chat_heldout"], args.max_prompt_tokens)
    common = dict(max_new_tokens=args.new_tokens, batch_size=args.generate_batch_size,
                  temperature=args.onpolicy_temperature, pad_id=pad_id_of(tok), eos_ids=eos)
    device = next(target.model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        seqs = continuations(target.model, prompts, seed=args.seed, **common) if prompts else []
        held = continuations(target.model, heldout_prompts, seed=args.seed + 7, **common) if heldout_prompts else []
    out = {"train": pack_blocks(seqs, args.block_size, sep), "heldout_chat": pack_blocks(held, args.block_size, sep),
           "stats": {"train_sequences": len(seqs), "train_tokens": sum(map(len, seqs)),
                     "heldout_sequences": len(held), "heldout_tokens": sum(map(len, held)),
                     "seconds": round(time.time() - started, 1)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def mix_blocks(parts: dict[str, torch.Tensor], factors: dict[str, float], seed: int) -> torch.Tensor:
    """Repeat each source `factor` times (fractional part: a seeded random subset of its rows)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for name, blocks in parts.items():
        f = float(factors.get(name, 1.0))
        if blocks.numel() == 0 or f <= 0:
            continue
        whole, frac = int(f), f - int(f)
        chosen += [blocks] * whole
        if frac > 0:
            chosen.append(blocks[torch.randperm(blocks.shape[0], generator=gen)[: int(frac * blocks.shape[0])]])
    if not chosen:
        raise DeferralError("no training blocks: the corpus is smaller than one --block-size row, or --mix is all 0")
    return torch.cat(chosen)


def build_student(args, target):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from training.distill.distill_export import student_config

    if args.init:
        return AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    torch.manual_seed(args.seed)
    config = student_config(target.model.config, args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
    return LlamaForCausalLM(config)


def held_out_sets(corpus: dict, onpolicy: dict | None, limit: int) -> dict[str, torch.Tensor]:
    sets = {"code": corpus["heldout_code"][:limit], "prose": corpus["heldout_prose"][:limit]}
    if onpolicy is not None:
        sets["chat"] = onpolicy["heldout_chat"][:limit]
    return {k: v for k, v in sets.items() if v.shape[0] > 0}


def _card(args, argv: list[str], summary: dict) -> str:
    final = summary["final"]
    lines = [
        "# Distilled drafter", "",
        f"A {args.layers}-layer, {args.hidden}-hidden Llama drafter (tied embeddings, "
        f"{summary['student_params'] / 1e6:.1f}M parameters) distilled from `{summary['target']}` by `deferral distill`.", "",
        "## Command", "", "```", "deferral distill " + " ".join(argv), "```", "",
        "## Data", "", "```json", json.dumps(summary["data"], indent=1), "```", "",
        "## Compute", "", f"- device: {summary['device_name']}; fit wall time {summary['fit_seconds']:.0f} s; "
        f"{summary['steps_done']} steps of {args.batch_size} x {args.block_size} tokens", "",
        "## Held-out agreement (teacher-forced greedy top-1, never trained on; the exported bf16 weights)", "",
        "| set | agreement | KL | tokens |", "| --- | --- | --- | --- |",
    ]
    for name in ("code", "prose", "chat"):
        if f"agree_{name}" in final:
            lines.append(f"| {name} | {final[f'agree_{name}']:.4f} | {final[f'kl_{name}']:.3f} | {final[f'tokens_{name}']} |")
    return "\n".join(lines) + "\n"


def fit_time_left(max_minutes: float | None, started: float) -> dict | None:
    """What is left of --max-minutes, counted from the command's start (`started`, data stages included)."""
    if not max_minutes:
        return None
    return {"seconds": max(1.0, max_minutes * 60 - (time.time() - started))}


class CommandTimer(Timer):
    """--max-minutes bounds this command: time spent by earlier fits of a resumed run is not carried over."""

    def load_state_dict(self, state_dict) -> None:
        pass


def fit_and_report(args, argv, target, corpus, onpolicy, run: Path, started: float) -> dict:
    """Stages 3 and 4: fit (resuming from the run's last checkpoint), measure the held-out agreement of
    the weights as exported (bf16), write summary.json and the export folder."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from training.distill.distill_eval import agreement
    from training.distill.distill_export import EXPORT_DTYPE, as_exported, export_drafter
    from training.distill.distill_module import BlockDataModule, DistillModule
    from training.distill.distill_tracking import make_loggers

    vocab = int(target.model.get_output_embeddings().weight.shape[0])
    student = build_student(args, target)
    if student.get_output_embeddings().weight.shape[0] < vocab:
        raise DeferralError("--init drafter has a smaller vocabulary than the target: use a drafter of the same tokenizer")
    train = mix_blocks({"code": corpus["train_code"], "prose": corpus["train_prose"], "onpolicy": onpolicy["train"]},
                       args.mix, args.seed)
    val = held_out_sets(corpus, onpolicy, args.val_blocks)
    data = BlockDataModule(train, val, args.batch_size, args.seed, val_batch_size=max(1, args.batch_size // 2))
    module = DistillModule(student, target.model, vocab, lr=args.lr, weight_decay=args.weight_decay,
                           warmup_steps=args.warmup_steps, total_steps=args.steps, topk=args.topk)
    ckpt_dir = run / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                 every_n_train_steps=args.checkpoint_every)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=args.steps, max_epochs=-1,
        val_check_interval=min(args.val_every, max(1, train.shape[0] // args.batch_size)),
        check_val_every_n_epoch=None, gradient_clip_val=1.0, log_every_n_steps=min(10, args.val_every), num_sanity_val_steps=0,
        logger=make_loggers(run, args.tracking_uri, args.experiment, run.name),
        callbacks=[checkpoint] + ([CommandTimer(fit_time_left(args.max_minutes, started), interval="step")]
                                  if args.max_minutes else []),
        enable_model_summary=False, default_root_dir=str(run),
    )
    started = time.time()
    resume = "last" if any(ckpt_dir.glob("last*.ckpt")) else None
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    fit_seconds = time.time() - started
    trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"))  # also when max_time stopped the fit mid-interval

    student.eval()
    exported = as_exported(student).to(device).eval()  # what a user loads: the weights rounded to bf16
    final: dict = {"steps": trainer.global_step}
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else None
    for name, blocks in held_out_sets(corpus, onpolicy, args.eval_blocks).items():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            m = agreement(exported, target.model.to(device), blocks, vocab, batch_size=16, desc=name)
        final.update({f"agree_{name}": m["agreement"], f"kl_{name}": m["kl"], f"tokens_{name}": m["tokens"]})
    summary = {
        "run_name": run.name, "args": {k: v for k, v in vars(args).items() if k != "config"},
        "target": target.source, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu", "fit_seconds": fit_seconds, "steps_done": trainer.global_step,
        "student_params": sum(p.numel() for p in student.parameters()), "train_blocks": int(train.shape[0]),
        "data": {"corpus": corpus["stats"], "onpolicy": onpolicy["stats"]}, "final": final,
        "finished": trainer.global_step >= args.steps, "agreement_weights": EXPORT_DTYPE,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    for logger in trainer.loggers:
        if type(logger).__name__ == "MLFlowLogger":
            logger.log_metrics({f"final/{k}": float(v) for k, v in final.items()})
    if args.export:
        export_drafter(student, target.tokenizer, args.export, card=_card(args, argv, summary), summary=final)
    return summary


def measure(args, run: Path) -> dict:
    from deferral.pair import load_pair
    from training.distill.distill_cost import relative_cost
    from training.distill.distill_eval import agreement

    if not args.drafter:
        raise DeferralError("--measure-only needs --drafter DIR (the drafter to measure)")
    pair = load_pair(args.drafter, args.target, device="cpu")
    corpus = prepare_corpus(args, pair.tokenizer, run / "data" / "corpus.pt")
    onpolicy_path = run / "data" / "onpolicy.pt"
    onpolicy = torch.load(onpolicy_path, weights_only=True) if onpolicy_path.is_file() else None
    torch.set_num_threads(args.threads)
    out: dict = {"drafter": args.drafter, "target": pair.target.source}
    for name, blocks in held_out_sets(corpus, onpolicy, args.eval_blocks).items() if args.eval_blocks else []:
        m = agreement(pair.drafter.model, pair.target.model, blocks, pair.vocab_size, batch_size=4, desc=name)
        out[f"agree_{name}"], out[f"tokens_{name}"] = m["agreement"], m["tokens"]
    out.update(relative_cost(pair.drafter.model, pair.target.model, pair.vocab_size, rounds=5))
    return out
