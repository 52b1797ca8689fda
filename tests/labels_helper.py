"""The token labels of N positions straight from two logit matrices, through the code `deferral log`
runs (features first, then the labels read partly off them)."""

from __future__ import annotations

import torch

from deferral.features import FeatureSpec, compute_features
from deferral.labels import labels_with_features

MIN_VOCAB = 16  # hand-built examples use 3 tokens; the features' top-k and rank columns need more


def token_labels(q_logits: torch.Tensor, p_logits: torch.Tensor, reference: torch.Tensor,
                 drafted: torch.Tensor) -> dict[str, torch.Tensor]:
    """q_logits, p_logits: (N, V); reference, drafted: (N,), drafted the drafter's argmax."""
    assert torch.equal(drafted, q_logits.argmax(-1)), "logged drafts are the drafter's argmax"
    if q_logits.shape[-1] < MIN_VOCAB:  # features read the top tokens: add tokens of probability exactly 0
        pad = torch.full((q_logits.shape[0], MIN_VOCAB - q_logits.shape[-1]), -1e4)
        q_logits, p_logits = torch.cat([q_logits, pad], -1), torch.cat([p_logits, pad], -1)
    features = compute_features(q_logits, p_logits, drafted[:, None])[:, 0, :]
    return labels_with_features(features, FeatureSpec().names, q_logits, p_logits, reference, drafted)
