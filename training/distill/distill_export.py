"""Write a distilled drafter as a plain Hugging Face folder (weights, config, tokenizer, card)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from deferral.pair import resolve_dtype


def student_config(target_config, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int):
    """A Llama config for the drafter: the target's vocabulary, special tokens and rotary base; tied embeddings."""
    from transformers import LlamaConfig

    rope = getattr(target_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    return LlamaConfig(
        vocab_size=int(target_config.vocab_size),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=int(getattr(target_config, "max_position_embeddings", 2048)),
        rope_parameters=dict(rope),
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=getattr(target_config, "bos_token_id", None),
        eos_token_id=getattr(target_config, "eos_token_id", None),
        pad_token_id=getattr(target_config, "pad_token_id", None),
    )


EXPORT_DTYPE = "bfloat16"  # drafters are saved in bf16: half the size; loading may upcast


def as_exported(student, dtype: str = EXPORT_DTYPE):
    """A float32 copy of `student` whose weights are rounded to `dtype` as export_drafter saves them,
    so that what is measured after training is what a user loads."""
    return copy.deepcopy(student).to(resolve_dtype(dtype)).to(torch.float32)


def export_drafter(student, tokenizer, folder: str | Path, dtype: str = EXPORT_DTYPE, card: str = "",
                   summary: dict | None = None) -> Path:
    """save_pretrained in `dtype` (bf16 halves the size; loading may upcast), tokenizer, README.md card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(student).to("cpu", resolve_dtype(dtype))
    model.config.use_cache = True
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if card:
        (folder / "README.md").write_text(card)
    if summary is not None:
        (folder / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    return folder


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
