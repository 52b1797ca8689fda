"""Per-token training targets for the router, computed from both models' logits at logged positions.

All labels use the *confidence* view of the models (plain softmax at temperature 1), as the features do.
With y the reference token that actually follows and x the drafted token:
- label_mismatch    1[argmax q != argmax p]: would greedy drafting disagree with the target?
- label_accept_prob min(1, p(x)/q(x)): the lossless speculative acceptance probability of x
- label_gap01       1[argmax q != y] - 1[argmax p != y]: the 0-1 loss gap the paper's OPT rule thresholds
- label_gap_nll     -log q(y) + log p(y): the log-loss gap
- tv                D_TV(q, p): with the gap, the oracle deferral for any alpha is  gap > alpha * tv
"""

from __future__ import annotations

import torch

LABEL_DEFINITIONS = {
    "label_mismatch": "1[argmax q != argmax p] (int8)",
    "label_accept_prob": "min(1, p(x)/q(x)) for the drafted token x, unscaled softmax (float32)",
    "label_gap01": "1[argmax q != y] - 1[argmax p != y] for the reference token y (float32)",
    "label_gap_nll": "-log q(y) + log p(y) for the reference token y (float32)",
    "tv": "D_TV(q, p) of the unscaled distributions; oracle deferral for alpha is gap > alpha * tv (float32)",
}


def compute_labels(
    q_logits: torch.Tensor, p_logits: torch.Tensor, reference: torch.Tensor, drafted: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Labels at N positions.

    Args:
        q_logits: (N, V) drafter logits over the shared vocabulary.
        p_logits: (N, V) target logits at the same positions.
        reference: (N,) the token y that follows in the logged text.
        drafted: (N,) the drafter's drafted token x.

    Returns:
        {name: (N,) tensor} for every key of LABEL_DEFINITIONS (int8 mismatch, float32 otherwise).
    """
    logq = torch.log_softmax(q_logits.float(), -1)  # (N, V)
    logp = torch.log_softmax(p_logits.float(), -1)
    q, p = logq.exp(), logp.exp()
    q_arg, p_arg = q_logits.argmax(-1), p_logits.argmax(-1)
    y, x = reference.long()[:, None], drafted.long()[:, None]
    q_x, p_x = q.gather(-1, x)[:, 0], p.gather(-1, x)[:, 0]
    return {
        "label_mismatch": (q_arg != p_arg).to(torch.int8),
        "label_accept_prob": (p_x / q_x.clamp_min(1e-30)).clamp_max(1.0),
        "label_gap01": (q_arg != y[:, 0]).float() - (p_arg != y[:, 0]).float(),
        "label_gap_nll": logp.gather(-1, y)[:, 0] - logq.gather(-1, y)[:, 0],
        "tv": (q - p).clamp_min(0).sum(-1),
    }


def labels_with_features(
    features: torch.Tensor,
    names: tuple[str, ...],
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    reference: torch.Tensor,
    drafted: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """compute_labels for drafted = argmax q, reusing what compute_features already computed.

    `features` (N, F) are compute_features(q_logits, p_logits, drafted[:, None])[:, 0] with layout
    `names`: TV, the acceptance probability of the drafted token and argmax agreement are read from
    them, so only the two loss gaps touch the (N, V) logits again (two logsumexp and one argmax
    instead of two full softmaxes). Values equal compute_labels up to float rounding.
    """
    col = {name: i for i, name in enumerate(names)}
    y = reference.long()[:, None]
    q32, p32 = q_logits.float(), p_logits.float()
    log_q_y = q32.gather(-1, y)[:, 0] - torch.logsumexp(q32, -1)  # (N,)
    log_p_y = p32.gather(-1, y)[:, 0] - torch.logsumexp(p32, -1)
    p_arg = p_logits.argmax(-1)
    return {
        "label_mismatch": (features[:, col["argmax_agree"]] < 0.5).to(torch.int8),
        "label_accept_prob": features[:, col["accept_prob_tok"]],
        "label_gap01": (drafted != reference).float() - (p_arg != reference).float(),
        "label_gap_nll": log_p_y - log_q_y,
        "tv": features[:, col["tv"]],
    }
