"""Choose the decode loop for a rule and run it over prompts in batches."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from deferral.errors import DeferralError
from deferral.pair import Pair, chat_prompt_ids
from deferral.rules import DeferralRule
from inference.autoregressive import autoregressive_generate
from inference.config import DecodeConfig, Generation, TokenSpace
from inference.sequential import sequential_generate
from inference.speculative import speculative_generate


def eos_token_ids(pair: Pair) -> set[int]:
    """EOS ids from the target's tokenizer and generation config (which may list several)."""
    ids: set[int] = set()
    tok = pair.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(pair.target.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return ids


def token_space(pair: Pair, eos_ids: set[int] | None = None) -> TokenSpace:
    """The pair's TokenSpace; `eos_ids` replaces the tokenizer's end-of-sequence ids (None: keep them)."""
    return TokenSpace(vocab_size=pair.vocab_size, eos_ids=frozenset(eos_token_ids(pair) if eos_ids is None else eos_ids),
                      pad_id=pair.pad_id, max_context=pair.max_context)


def encode_messages(pair: Pair, messages: list[dict]) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, ready for the reply."""
    tok = pair.tokenizer
    if not getattr(tok, "chat_template", None):
        raise DeferralError("the target's tokenizer has no chat template: send plain prompts instead")
    return chat_prompt_ids(tok, messages)


def encode_prompts(pair: Pair, texts: list[str], chat: bool = False) -> list[list[int]]:
    """Token ids per prompt; `chat` wraps each as a user turn of the tokenizer's chat template."""
    tok = pair.tokenizer
    out = []
    for text in texts:
        if not text:
            raise DeferralError("a prompt is empty: give at least one character of text")
        if chat:
            if not getattr(tok, "chat_template", None):
                raise DeferralError("--chat was given but the target's tokenizer has no chat template: drop --chat")
            ids = encode_messages(pair, [{"role": "user", "content": text}])
        else:
            ids = tok(text, add_special_tokens=True)["input_ids"]
        if not ids:
            raise DeferralError(f"prompt {text[:30]!r} encodes to no tokens: give more text")
        out.append([int(i) for i in ids])
    return out


def run(
    pair: Pair,
    rule: DeferralRule,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    batch_size: int = 1,
    sequential: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Decode every prompt; rows of a batch share one decode loop. Returns one Generation per prompt,
    in the order of `prompts`. `on_batch(n)` hears of n prompts finishing.

    Prompts are taken sorted by length, longest first: rows decoded together are left-padded to the
    longest of them, so mixing lengths would spend much of a large batch's prefill and attention on
    padding (and the longest prompts first show a memory limit at once). batch_size rows are kept busy,
    waiting prompts taking the rows of finished ones; the sequential cascade, which decodes one row at
    a time, takes the prompts in batches of batch_size."""
    if batch_size < 1:
        raise DeferralError(f"--batch-size must be at least 1, got {batch_size}")
    tokens = token_space(pair)
    order = length_order(prompts)
    results: list[Generation | None] = [None] * len(prompts)
    if batch_size > 1 and not sequential:
        # One decode loop over every prompt with batch_size rows: a prompt takes the row of one that
        # finished, so rows that finish sooner (more drafts accepted, an earlier EOS) do not wait for
        # the slowest.
        ordered, loop_cfg = [prompts[i] for i in order], replace(cfg, seed=cfg.seed + order[0])
        if rule.plain_model:
            generations = autoregressive_generate(getattr(pair, rule.plain_model).model, ordered, loop_cfg, tokens,
                                                  counter=f"{rule.plain_model}_calls", slots=batch_size,
                                                  on_finish=on_batch)
        else:
            generations = speculative_generate(pair.drafter.model, pair.target.model, rule, ordered, loop_cfg,
                                               tokens, slots=batch_size, on_finish=on_batch)
        for i, generation in zip(order, generations):
            results[i] = generation
        return results
    for start in range(0, len(prompts), batch_size):
        rows = order[start : start + batch_size]
        chunk = [prompts[i] for i in rows]
        chunk_cfg = replace(cfg, seed=cfg.seed + min(rows))  # at batch size 1, prompt i draws with seed + i
        if rule.plain_model:  # one model decoding alone: no drafts, no verification
            model = getattr(pair, rule.plain_model).model
            generations = autoregressive_generate(model, chunk, chunk_cfg, tokens, counter=f"{rule.plain_model}_calls")
        elif sequential:
            generations = sequential_generate(pair.drafter.model, pair.target.model, rule, chunk, chunk_cfg, tokens)
        else:
            generations = speculative_generate(pair.drafter.model, pair.target.model, rule, chunk, chunk_cfg, tokens)
        for i, generation in zip(rows, generations):
            results[i] = generation
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def length_order(prompts: list[list[int]]) -> list[int]:
    """Prompt indices, longest prompt first; prompts of equal length keep their order."""
    return sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
