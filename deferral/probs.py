"""Turning logits into the distributions the rules and the sampler use.

Two views of every model output exist side by side (paper, Appendix C.1):
- *sampling* distributions: temperature-scaled and top-p truncated; used for drafting, acceptance,
  resampling and the TV term. Temperature 0 means one-hot on the argmax.
- *confidence* distributions: the plain softmax at temperature 1; used by confidence terms
  (max q, max p, p(v)) and by the router's features.
"""

from __future__ import annotations

import torch


def softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float32 whatever the model dtype: (..., V) -> (..., V)."""
    return torch.softmax(logits.float(), dim=-1)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """(..., V) logits -> (..., V) sampling distribution at `temperature`, truncated to `top_p` mass.

    temperature == 0 gives the one-hot vector of the argmax (greedy decoding as a distribution).
    """
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = softmax_fp32(logits / temperature)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    return probs


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p, renormalised. (..., V)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_before < top_p  # the top token always survives (mass_before == 0)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row from (N, V) probabilities -> (N,) int64."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """D_TV(a, b) = sum_v max(0, a(v) - b(v)) over the last axis: (..., V) -> (...)."""
    return (a - b).clamp_min(0).sum(-1)
