"""Tiny random Llama models with a character-level tokenizer, saved as Hugging Face folders.

They load through the same from_pretrained path as real models. The vocabulary is small (about 100
tokens) so that distribution tests can enumerate it.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + " \n")


def make_tokenizer(extra: list[str] | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + ALPHABET + (extra or []))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


def make_model(folder: Path, layers: int, hidden: int, seed: int, vocab_pad: int = 0, extra=None, scale=1.0):
    """Save a random LlamaForCausalLM (+ tokenizer) to `folder`; `scale` sharpens its logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(extra)
    config = LlamaConfig(
        vocab_size=len(tok) + vocab_pad,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_noisy_copy(source: Path, folder: Path, noise: float, seed: int = 0):
    """Save a copy of the model in `source` with Gaussian noise (std `noise` x each tensor's std) added
    to every weight: a drafter that agrees with its source on part of the tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * noise * param.std().clamp_min(1e-6))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder
