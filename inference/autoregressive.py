"""Plain KV-cached decoding with one model: the target-only and drafter-only baselines."""

from __future__ import annotations

import torch

from deferral.probs import sampling_probs
from inference.batch import BatchState, left_pad, prefill
from inference.cached_lm import CachedLM
from inference.config import DecodeConfig, Generation
from inference.speculative import draw


@torch.inference_mode()
def autoregressive_generate(
    model,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    vocab_size: int,
    eos_ids: set[int],
    pad_id: int,
    max_context: int,
    counter: str = "target_calls",
) -> list[Generation]:
    """Decode with `model` alone; `counter` names the statistic its forward calls count toward."""
    state = BatchState(prompts, cfg, eos_ids, max_context)
    lm = CachedLM(model, vocab_size)
    generator = torch.Generator(device=lm.device).manual_seed(cfg.seed)
    ids, valid = left_pad(prompts, pad_id, lm.device)
    prefill(lm, ids, valid)
    for row in range(len(prompts)):
        state.count(row, **{counter: ids.shape[1] > 1})
    last = ids[:, -1]
    [last] = state.drop([r for r in range(len(prompts)) if state.commit(r, [])], [lm], last)
    while state.active:
        logits = lm.forward(last[:, None])[:, -1]
        last = draw(sampling_probs(logits, cfg.temperature, cfg.top_p), cfg, generator)
        finished = []
        for r in range(last.shape[0]):
            state.count(r, **{counter: 1})
            if state.commit(r, [int(last[r])]):
                finished.append(r)
        [last] = state.drop(finished, [lm], last)
    return state.results()
