"""Plain KV-cached decoding with one model: the target-only and drafter-only baselines."""

from __future__ import annotations

import torch

from inference.batch import BatchState, left_pad, prefill
from inference.config import DecodeConfig, Generation, TokenSpace
from inference.engines import open_lm
from inference.speculative import draw_from_logits


@torch.inference_mode()
def autoregressive_generate(
    model,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    tokens: TokenSpace,
    counter: str = "target_calls",
) -> list[Generation]:
    """Decode with `model` alone; `counter` names the statistic its forward calls count toward."""
    state = BatchState(prompts, cfg, tokens.eos_ids, tokens.max_context)
    lm = open_lm(model, tokens.vocab_size, cfg.engine, prompts, cfg.max_new_tokens, owner=state)
    generator = torch.Generator(device=lm.device).manual_seed(cfg.seed)
    ids, valid = left_pad(prompts, tokens.pad_id, lm.device)
    prefill(lm, ids, valid)
    for row in range(len(prompts)):
        state.count(row, **{counter: ids.shape[1] > 1})
    last = ids[:, -1]
    [last] = state.drop([r for r in range(len(prompts)) if state.commit(r, [])], [lm], last)
    while state.active:
        logits = lm.forward(last[:, None], last_only=True)[:, -1]  # (B, V)
        last = draw_from_logits(logits, cfg, generator)
        finished = []
        for r, token in enumerate(last.tolist()):
            state.count(r, **{counter: 1})
            if state.commit(r, [token]):
                finished.append(r)
        [last] = state.drop(finished, [lm], last)
    return state.results()
