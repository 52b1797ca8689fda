"""Plain KV-cached decoding with one model: the target-only and drafter-only baselines."""

from __future__ import annotations

from typing import Callable

import torch

from inference.batch import BatchState, RowQueue, join_rows, left_pad, prefill
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
    slots: int | None = None,
    on_finish: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Decode with `model` alone; `counter` names the statistic its forward calls count toward. With
    `slots`, at most that many rows at once, waiting prompts taking finished ones' rows
    (inference.batch.RowQueue); `on_finish(n)` hears of n prompts finishing."""
    queue = RowQueue(len(prompts), slots)
    state = BatchState(prompts, cfg, tokens.eos_ids, tokens.max_context, first=queue.first)
    lm = open_lm(model, tokens.vocab_size, cfg.engine, [prompts[i] for i in queue.first], cfg.max_new_tokens,
                 owner=state)
    generator = torch.Generator(device=lm.device).manual_seed(cfg.seed)
    ids, valid = left_pad([prompts[i] for i in queue.first], tokens.pad_id, lm.device)
    prefill(lm, ids, valid)
    for row in range(len(queue.first)):
        state.count(row, **{counter: ids.shape[1] > 1})
    last = ids[:, -1]
    [last] = state.drop([r for r in range(len(queue.first)) if state.commit(r, [])], [lm], last)
    while state.active or queue.waiting:
        joining = queue.take(len(state.active))
        if joining:
            b = len(state.active)
            last = torch.cat([last, join_rows([lm], state, prompts, joining, tokens.pad_id, lm.device, (counter,))])
            [last] = state.drop([r for r in range(b, len(state.active)) if state.commit(r, [])], [lm], last)
        logits = lm.forward(last[:, None], last_only=True)[:, -1]  # (B, V)
        last = draw_from_logits(logits, cfg, generator)
        finished = []
        for r, token in enumerate(last.tolist()):
            state.count(r, **{counter: 1})
            if state.commit(r, [token]):
                finished.append(r)
        [last] = state.drop(finished, [lm], last)
        if on_finish is not None and finished:
            on_finish(len(finished))
    return state.results()
