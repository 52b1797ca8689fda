"""Accept/reject for speculative sampling with an arbitrary target π (pure tensor functions)."""

from __future__ import annotations

import torch

from deferral.probs import sample


def accept_drafts(
    pi: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """How many leading drafts each row keeps.

    pi, q: (B, K, V) target and drafter sampling distributions at the K drafted positions.
    drafts: (B, K) drafted tokens. Returns (B,) int64 in [0, K]: a draft x is kept with probability
    min(1, π(x)/q(x)), scanning left to right and stopping at the first rejection.
    """
    pi_x = pi.gather(-1, drafts[..., None]).squeeze(-1)  # (B, K)
    q_x = q.gather(-1, drafts[..., None]).squeeze(-1)
    ratio = (pi_x / q_x.clamp_min(1e-30)).clamp_max(1.0)
    u = torch.rand(ratio.shape, generator=generator, device=ratio.device)
    accepted = (u < ratio).long()
    return accepted.cumprod(-1).sum(-1)


def residual_sample(pi: torch.Tensor, q: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw from norm(max(0, π − q)) per row: (N, V) -> (N,).

    Where the residual has no mass (π == q up to rounding; a rejection there has probability ~0),
    fall back to π itself.
    """
    residual = (pi - q).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 1e-12, residual / mass.clamp_min(1e-30), pi)
    return sample(residual, generator)
