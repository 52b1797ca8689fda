"""The router's feature vector: the ONE place that turns (q, p, candidate token) into numbers.

Logging (training data) and the decode loop (inference) both call `compute_features`, so a router
sees at inference exactly what it was trained on. Every feature uses the *confidence* view of the
models (plain softmax at temperature 1, see `deferral.probs`), so features do not depend on the
decoding temperature.

Features come in two groups:
- position features: depend on (q, p) only (confidences, entropies, top-k mass, TV, KL, and how the
  two argmaxes relate);
- token features: depend on a candidate token v as well (q(v), p(v), the quantities TokenV1-V3
  threshold, v's rank under p). The drafted token is one candidate; the learned rule scores the
  drafter's top candidates so that its acceptable set is well defined at any temperature.
Optional hidden states of either model are appended after these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FEATURE_VERSION = 1
TOP_K = 4  # top-k probabilities logged per model
RANK_CAP = 16  # ranks beyond this are reported as RANK_CAP

POSITION_FEATURES = (
    [f"q_top{i}" for i in range(1, TOP_K + 1)]
    + ["q_entropy", "q_margin"]
    + [f"p_top{i}" for i in range(1, TOP_K + 1)]
    + ["p_entropy", "p_margin"]
    + ["tv", "kl_q_p", "kl_p_q", "p_at_q_argmax", "q_at_p_argmax", "argmax_agree", "p_max_minus_q_max"]
)
TOKEN_FEATURES = [
    "q_tok",
    "p_tok",
    "log_q_tok",
    "log_p_tok",
    "log_p_over_q_tok",
    "accept_prob_tok",  # min(1, p(v)/q(v)): the lossless acceptance probability
    "tok_is_q_argmax",
    "tok_is_p_argmax",
    "p_tok_over_p_max",  # TokenV3's statistic
    "q_tok_minus_p_max",  # TokenV1's statistic
    "p_tok_minus_p_max",  # TokenV2's statistic
    "log_rank_p_tok",
]
LOG_FLOOR = -30.0  # log-probabilities are clamped here so that zero probabilities stay finite


@dataclass(frozen=True)
class FeatureSpec:
    """Identity of a feature vector layout; stored with logged data and with exported routers."""

    version: int = FEATURE_VERSION
    drafter_hidden: int = 0  # width of appended drafter hidden state (0 = not used)
    target_hidden: int = 0  # width of appended target hidden state (0 = not used)
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = POSITION_FEATURES + TOKEN_FEATURES
        names += [f"hq_{i}" for i in range(self.drafter_hidden)]
        names += [f"hp_{i}" for i in range(self.target_hidden)]
        object.__setattr__(self, "names", tuple(names))

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "drafter_hidden": self.drafter_hidden,
            "target_hidden": self.target_hidden,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(
            version=int(d["version"]),
            drafter_hidden=int(d.get("drafter_hidden", 0)),
            target_hidden=int(d.get("target_hidden", 0)),
        )

    def mismatch(self, other: "FeatureSpec") -> str | None:
        """A one-line description of how `other` differs from this spec, or None when they agree."""
        if self.version != other.version:
            return f"feature version {other.version} != {self.version}"
        if self.names != other.names:
            return f"feature layout differs ({other.dim} features vs {self.dim})"
        return None


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def compute_features(
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    candidates: torch.Tensor,
    drafter_hidden: torch.Tensor | None = None,
    target_hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature vectors for candidate tokens at N positions.

    Args:
        q_logits: (N, V) drafter logits (unscaled) at each position, over the shared vocabulary.
        p_logits: (N, V) target logits (unscaled) at the same positions.
        candidates: (N, C) token ids to describe at each position (C = 1 for the drafted token).
        drafter_hidden: optional (N, Hq) drafter last hidden state, appended to every candidate.
        target_hidden: optional (N, Hp) target last hidden state, appended likewise.

    Returns:
        (N, C, F) float32 features, F = FeatureSpec(...).dim, in FeatureSpec.names order.
    """
    n, c = candidates.shape
    logq = torch.log_softmax(q_logits.float(), -1)  # (N, V)
    logp = torch.log_softmax(p_logits.float(), -1)
    q, p = logq.exp(), logp.exp()

    q_top = q.topk(TOP_K, -1).values  # (N, TOP_K), descending
    p_top, p_top_idx = p.topk(max(TOP_K, RANK_CAP), -1)
    q_arg = q.argmax(-1)  # (N,)
    p_arg = p_top_idx[:, 0]
    p_max, q_max = p_top[:, 0], q_top[:, 0]

    position = torch.cat(
        [
            q_top,
            _entropy(logq)[:, None],
            (q_top[:, 0] - q_top[:, 1])[:, None],
            p_top[:, :TOP_K],
            _entropy(logp)[:, None],
            (p_top[:, 0] - p_top[:, 1])[:, None],
            (q - p).clamp_min(0).sum(-1)[:, None],
            (q * (logq - logp)).sum(-1)[:, None],
            (p * (logp - logq)).sum(-1)[:, None],
            p.gather(-1, q_arg[:, None]),
            q.gather(-1, p_arg[:, None]),
            (q_arg == p_arg).float()[:, None],
            (p_max - q_max)[:, None],
        ],
        dim=-1,
    )  # (N, len(POSITION_FEATURES))

    q_tok = q.gather(-1, candidates)  # (N, C)
    p_tok = p.gather(-1, candidates)
    log_q_tok = logq.gather(-1, candidates).clamp_min(LOG_FLOOR)
    log_p_tok = logp.gather(-1, candidates).clamp_min(LOG_FLOOR)
    rank = (p_top[:, None, :RANK_CAP] > p_tok[:, :, None]).sum(-1)  # (N, C), capped at RANK_CAP
    token = torch.stack(
        [
            q_tok,
            p_tok,
            log_q_tok,
            log_p_tok,
            log_p_tok - log_q_tok,
            (p_tok / q_tok.clamp_min(1e-30)).clamp_max(1.0),
            (candidates == q_arg[:, None]).float(),
            (candidates == p_arg[:, None]).float(),
            p_tok / p_max[:, None],
            q_tok - p_max[:, None],
            p_tok - p_max[:, None],
            torch.log1p(rank.float()),
        ],
        dim=-1,
    )  # (N, C, len(TOKEN_FEATURES))

    parts = [position[:, None, :].expand(n, c, -1), token]
    for hidden in (drafter_hidden, target_hidden):
        if hidden is not None:
            parts.append(hidden.float()[:, None, :].expand(n, c, -1))
    return torch.cat(parts, dim=-1)
