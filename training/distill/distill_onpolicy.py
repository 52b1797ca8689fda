"""On-policy data: the target's own continuations of prompts, which is what a drafter must predict at run time."""

from __future__ import annotations

import torch
from tqdm import tqdm

from deferral.pair import chat_prompt_ids
from inference.batch import left_pad


def chat_encode(tokenizer, messages: list[str], max_tokens: int) -> list[list[int]]:
    """Each message as a user turn of the tokenizer's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    out = []
    for text in messages:
        ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])
        if len(ids) <= max_tokens:
            out.append(ids)
    return out


@torch.inference_mode()
def continuations(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    pad_id: int,
    eos_ids: list[int],
    seed: int,
) -> list[list[int]]:
    """prompt + the target's continuation for each prompt (cut after the first EOS).

    Prompts are batched by length (left padding) so little compute goes to padding; temperature 0 is
    greedy. The order of the returned sequences follows the sorted prompts, which is deterministic.
    """
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = []
    eos = set(eos_ids)
    for start in tqdm(range(0, len(order), batch_size), desc="on-policy", unit="batch"):
        batch = [prompts[i] for i in order[start : start + batch_size]]
        ids, mask = left_pad(batch, pad_id, device)  # (B, width)
        width = ids.shape[1]
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
            "do_sample": False}
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, eos_token_id=list(eos), **sampling,
        )[:, width:].tolist()  # (B, <= max_new_tokens)
        for p, new in zip(batch, generated):
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            out.append(p + new[:cut])
    return out
