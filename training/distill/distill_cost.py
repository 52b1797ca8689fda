"""Per-token decode cost of a drafter relative to its target: batch 1, KV-cached, as the engine decodes.

Both models are timed in the same process, alternating rounds, so machine drift cancels out of the ratio.
Random weights cost the same as trained ones, so a candidate architecture can be priced before training.
"""

from __future__ import annotations

import time

import torch

from inference.cached_lm import CachedLM


@torch.inference_mode()
def seconds_per_token(model, vocab_size: int, context: int = 64, new_tokens: int = 32, seed: int = 0) -> float:
    """Wall seconds per single-token forward call after a `context`-token prefill (batch 1)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (1, context), generator=gen).to(device)  # (1, context)
    lm = CachedLM(model, vocab_size)
    logits = lm.forward(prompt)
    token = logits[:, -1:].argmax(-1)  # (1, 1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = lm.forward(token)[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / new_tokens


def relative_cost(drafter, target, vocab_size: int, rounds: int = 3, context: int = 64, new_tokens: int = 32) -> dict:
    """Median per-token seconds of each model over alternating rounds, and the median per-round ratio."""
    seconds_per_token(drafter, vocab_size, context, 4)  # warm-up: allocator, kernels
    seconds_per_token(target, vocab_size, context, 4)
    d_times, t_times = [], []
    for r in range(rounds):
        d_times.append(seconds_per_token(drafter, vocab_size, context, new_tokens, seed=r))
        t_times.append(seconds_per_token(target, vocab_size, context, new_tokens, seed=r))
    d, t = sorted(d_times)[rounds // 2], sorted(t_times)[rounds // 2]
    # The ratio of each round's adjacent timings, then the median: load that drifts between rounds cancels.
    ratio = sorted(a / b for a, b in zip(d_times, t_times))[rounds // 2]
    return {"drafter_ms_per_token": 1e3 * d, "target_ms_per_token": 1e3 * t, "cost_ratio": ratio,
            "threads": torch.get_num_threads(), "rounds": rounds, "context": context, "new_tokens": new_tokens}
