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
- look-ahead features (optional): what the target's verify pass says about the drafted tokens *after*
  this one in the same block (does the target agree with them again, how likely it finds them). They
  describe the drafted token's own continuation, so a router that uses them scores the drafted token
  only (see `deferral.rules.Learned`).
Optional hidden states of either model are appended after these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FEATURE_VERSION = 1
TOP_K = 4  # top-k probabilities logged per model
RANK_CAP = 16  # ranks beyond this are reported as RANK_CAP
LOOKAHEAD = 4  # drafted positions after this one that the look-ahead features summarise (K - 1 at K = 5)

LOG_FLOOR = -30.0  # log-probabilities are clamped here so that zero probabilities stay finite


# Each feature group is one builder returning {name: column} in order: a feature's name and its value
# are written on the same line, and the name lists below are read off the builders themselves.


@dataclass
class Distributions:
    """Both models' distributions at N positions, with the statistics several features share."""

    q: torch.Tensor  # (N, V) drafter probabilities
    p: torch.Tensor  # (N, V) target probabilities
    logq: torch.Tensor  # (N, V)
    logp: torch.Tensor  # (N, V)

    def __post_init__(self) -> None:
        self.q_top = self.q.topk(TOP_K, -1).values  # (N, TOP_K), descending
        self.p_top, p_top_idx = self.p.topk(max(TOP_K, RANK_CAP), -1)  # (N, RANK_CAP)
        self.q_arg = self.q.argmax(-1)  # (N,)
        self.p_arg = p_top_idx[:, 0]
        self.p_max, self.q_max = self.p_top[:, 0], self.q_top[:, 0]

    @classmethod
    def from_logits(cls, q_logits: torch.Tensor, p_logits: torch.Tensor) -> "Distributions":
        logq, logp = torch.log_softmax(q_logits.float(), -1), torch.log_softmax(p_logits.float(), -1)
        return cls(logq.exp(), logp.exp(), logq, logp)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def drafter_columns(q_top: torch.Tensor, logq: torch.Tensor) -> dict[str, torch.Tensor]:
    """The features of a position that the drafter alone gives (what a stop head can read before the
    target runs): name -> (N,). q_top: (N, TOP_K) descending probabilities; logq: (N, V)."""
    return {
        **{f"q_top{i + 1}": q_top[:, i] for i in range(TOP_K)},
        "q_entropy": _entropy(logq),
        "q_margin": q_top[:, 0] - q_top[:, 1],
    }


def drafter_statistics(q_logits: torch.Tensor) -> torch.Tensor:
    """(N, V) drafter logits -> (N, len(DRAFTER_FEATURES)) float32, in DRAFTER_FEATURES order."""
    logq = torch.log_softmax(q_logits.float(), -1)
    return torch.stack(list(drafter_columns(logq.exp().topk(TOP_K, -1).values, logq).values()), dim=-1)


def position_columns(d: Distributions) -> dict[str, torch.Tensor]:
    """Features of a position, the same for every candidate token: name -> (N,)."""
    q, p, logq, logp = d.q, d.p, d.logq, d.logp
    return {
        **drafter_columns(d.q_top, logq),
        **{f"p_top{i + 1}": d.p_top[:, i] for i in range(TOP_K)},
        "p_entropy": _entropy(logp),
        "p_margin": d.p_top[:, 0] - d.p_top[:, 1],
        "tv": (q - p).clamp_min(0).sum(-1),
        "kl_q_p": (q * (logq - logp)).sum(-1),
        "kl_p_q": (p * (logp - logq)).sum(-1),
        "p_at_q_argmax": p.gather(-1, d.q_arg[:, None])[:, 0],
        "q_at_p_argmax": q.gather(-1, d.p_arg[:, None])[:, 0],
        "argmax_agree": (d.q_arg == d.p_arg).float(),
        "p_max_minus_q_max": d.p_max - d.q_max,
    }


def token_columns(d: Distributions, candidates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features of each candidate token (candidates: (N, C) ids): name -> (N, C)."""
    q_tok = d.q.gather(-1, candidates)
    p_tok = d.p.gather(-1, candidates)
    log_q_tok = d.logq.gather(-1, candidates).clamp_min(LOG_FLOOR)
    log_p_tok = d.logp.gather(-1, candidates).clamp_min(LOG_FLOOR)
    rank = (d.p_top[:, None, :RANK_CAP] > p_tok[:, :, None]).sum(-1)  # (N, C), capped at RANK_CAP
    p_max = d.p_max[:, None]
    return {
        "q_tok": q_tok,
        "p_tok": p_tok,
        "log_q_tok": log_q_tok,
        "log_p_tok": log_p_tok,
        "log_p_over_q_tok": log_p_tok - log_q_tok,
        "accept_prob_tok": (p_tok / q_tok.clamp_min(1e-30)).clamp_max(1.0),  # the lossless acceptance probability
        "tok_is_q_argmax": (candidates == d.q_arg[:, None]).float(),
        "tok_is_p_argmax": (candidates == d.p_arg[:, None]).float(),
        "p_tok_over_p_max": p_tok / p_max,  # TokenV3's statistic
        "q_tok_minus_p_max": q_tok - p_max,  # TokenV1's statistic
        "p_tok_minus_p_max": p_tok - p_max,  # TokenV2's statistic
        "log_rank_p_tok": torch.log1p(rank.float()),
    }


def agree_run(ahead: "Lookahead") -> torch.Tensor:
    """(N,) how many drafted tokens right after each position the target agrees with, in a row.

    Keeping a drafted token the target would replace gains exactly this many tokens plus one in its
    block (itself and the agreeing run; then the next mismatch is decided, or the bonus token comes).
    """
    return (ahead.agree & ahead.valid).float().cumprod(-1).sum(-1)


def lookahead_columns(ahead: "Lookahead") -> dict[str, torch.Tensor]:
    """Features of the drafted tokens after a position in its block: name -> (N,)."""
    valid = ahead.valid.float()
    agree = (ahead.agree & ahead.valid).float()
    logp = ahead.logp_next.float() * valid
    n = valid.sum(-1)  # (N,)
    denom = n.clamp_min(1.0)
    return {
        "ahead_n": n,  # drafted positions after this one in the block (0..LOOKAHEAD)
        "ahead_agree_next": agree[:, 0],  # the next drafted token is the target's argmax there (0 if none)
        "ahead_agree_run": agree_run(ahead),  # consecutive such agreements right after this position
        "ahead_agree_frac": agree.sum(-1) / denom,  # share of the following drafts the target agrees with
        "ahead_logp_next": logp[:, 0],  # log p of the next drafted token (0 if none)
        "ahead_logp_mean": logp.sum(-1) / denom,  # mean log p of the following drafted tokens (0 if none)
        "ahead_logp_min": torch.where(ahead.valid, logp, torch.zeros_like(logp)).amin(-1),  # smallest of those
    }


def _names_of_builders() -> tuple[list[str], list[str], list[str]]:
    """The builders' names, read off one call on a small stand-in input (V = 2 * RANK_CAP)."""
    logits = torch.linspace(0.0, 1.0, 2 * RANK_CAP)[None]
    d = Distributions.from_logits(logits, logits.flip(-1))
    ahead = Lookahead(torch.zeros(1, LOOKAHEAD), torch.zeros(1, LOOKAHEAD, dtype=torch.bool),
                      torch.zeros(1, LOOKAHEAD, dtype=torch.bool))
    return list(position_columns(d)), list(token_columns(d, d.q_arg[:, None])), list(lookahead_columns(ahead))


@dataclass(frozen=True)
class FeatureSpec:
    """Identity of a feature vector layout; stored with logged data and with exported routers."""

    version: int = FEATURE_VERSION
    drafter_hidden: int = 0  # width of appended drafter hidden state (0 = not used)
    target_hidden: int = 0  # width of appended target hidden state (0 = not used)
    lookahead: bool = False  # look-ahead features over the rest of the drafted block
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = POSITION_FEATURES + TOKEN_FEATURES + (LOOKAHEAD_FEATURES if self.lookahead else [])
        names += [f"hq_{i}" for i in range(self.drafter_hidden)]
        names += [f"hp_{i}" for i in range(self.target_hidden)]
        object.__setattr__(self, "names", tuple(names))

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def block_features(self) -> bool:
        """Features that describe the drafted token's own continuation (look-ahead): they exist only
        for the drafted token, inside a verified block."""
        return self.lookahead

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "drafter_hidden": self.drafter_hidden,
            "target_hidden": self.target_hidden,
            "lookahead": self.lookahead,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(
            version=int(d["version"]),
            drafter_hidden=int(d.get("drafter_hidden", 0)),
            target_hidden=int(d.get("target_hidden", 0)),
            lookahead=bool(d.get("lookahead", False)),
        )

    @classmethod
    def check_stored(cls, d: dict) -> "FeatureSpec":
        """The spec a stored description (router.json, a log's meta.json) asks for, checked name by name.

        Raises DeferralError when the stored names are missing or differ from the names this version
        computes for the same options (a renamed, reordered, added or dropped feature).
        """
        from deferral.errors import DeferralError

        if not isinstance(d, dict) or "version" not in d:
            raise DeferralError("the feature description is missing or malformed: re-log the data and retrain")
        spec = cls.from_dict(d)
        if spec.version != FEATURE_VERSION:
            raise DeferralError(
                f"feature version {spec.version} != {FEATURE_VERSION}: re-log the data and retrain the router with this version"
            )
        stored = d.get("names")
        if stored is None:
            raise DeferralError("the feature description stores no feature names: re-export with this version")
        problem = spec.mismatch_names(tuple(stored))
        if problem:
            raise DeferralError(f"{problem}: re-log the data and retrain the router with this version")
        return spec

    def mismatch_names(self, stored: tuple[str, ...]) -> str | None:
        """How stored feature names differ from the ones computed here, or None when identical."""
        if stored == self.names:
            return None
        for i, (a, b) in enumerate(zip(stored, self.names)):
            if a != b:
                return f"feature {i} is '{a}' in the stored layout but '{b}' in this version"
        return f"the stored layout has {len(stored)} features, this version computes {len(self.names)}"

    def mismatch(self, other: "FeatureSpec") -> str | None:
        """A one-line description of how `other` differs from this spec, or None when they agree."""
        if self.version != other.version:
            return f"feature version {other.version} != {self.version}"
        if self.names != other.names:
            return f"feature layout differs ({other.dim} features vs {self.dim})"
        return None


@dataclass
class Lookahead:
    """What the verify pass says about the drafted tokens after each position of a block, for N positions.

    p_next: (N, W) log p (target confidence) of the drafted token i + 1 positions ahead, given the drafts
        before it; 0 where that position is not in the block.
    agree:  (N, W) bool, that drafted token is the target's argmax at its position.
    valid:  (N, W) bool, that position exists in the block.
    """

    logp_next: torch.Tensor
    agree: torch.Tensor
    valid: torch.Tensor


def block_lookahead(p_logits: torch.Tensor, drafts: torch.Tensor, window: int = LOOKAHEAD) -> Lookahead:
    """Look-ahead of every drafted position of a block, from the verify pass.

    Args:
        p_logits: (B, k, V) target logits at the k drafted positions (the verify pass minus its bonus).
        drafts: (B, k) drafted tokens.
    Returns:
        Lookahead with (B * k, window) tensors, rows in (b, j) order.
    """
    b, k = drafts.shape
    logits = p_logits.float()
    # log p of each draft without materialising a (B, k, V) log-softmax: gather minus logsumexp
    logp_draft = (logits.gather(-1, drafts[..., None].long())[..., 0] - torch.logsumexp(logits, -1)).clamp_min(LOG_FLOOR)
    agree = p_logits.argmax(-1) == drafts  # (B, k)
    pad = window
    logp_pad = torch.cat([logp_draft, logp_draft.new_zeros(b, pad)], 1)  # (B, k + W)
    agree_pad = torch.cat([agree, agree.new_zeros(b, pad)], 1)
    offsets = torch.arange(1, window + 1, device=drafts.device)  # (W,)
    idx = torch.arange(k, device=drafts.device)[:, None] + offsets[None, :]  # (k, W): j + i
    valid = (idx < k)[None].expand(b, k, window)
    return Lookahead(
        logp_next=logp_pad[:, idx].reshape(b * k, window),
        agree=agree_pad[:, idx].reshape(b * k, window),
        valid=valid.reshape(b * k, window),
    )


def no_lookahead(n: int, device, window: int = LOOKAHEAD) -> Lookahead:
    """Look-ahead of N positions with nothing after them (the end of a block, a bonus position)."""
    zeros = torch.zeros(n, window, device=device)
    return Lookahead(logp_next=zeros, agree=zeros.bool(), valid=zeros.bool())


def lookahead_features(ahead: Lookahead) -> torch.Tensor:
    """(N, W) look-ahead -> (N, len(LOOKAHEAD_FEATURES)) in LOOKAHEAD_FEATURES order."""
    return torch.stack(list(lookahead_columns(ahead).values()), dim=-1)


def compute_features(
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    candidates: torch.Tensor,
    drafter_hidden: torch.Tensor | None = None,
    target_hidden: torch.Tensor | None = None,
    lookahead: Lookahead | None = None,
) -> torch.Tensor:
    """Feature vectors for candidate tokens at N positions.

    Args:
        q_logits: (N, V) drafter logits (unscaled) at each position, over the shared vocabulary.
        p_logits: (N, V) target logits (unscaled) at the same positions.
        candidates: (N, C) token ids to describe at each position (C = 1 for the drafted token).
        drafter_hidden: optional (N, Hq) drafter last hidden state, appended to every candidate.
        target_hidden: optional (N, Hp) target last hidden state, appended likewise.
        lookahead: optional Lookahead of the N positions (see block_lookahead), for FeatureSpec(lookahead=True).

    Returns:
        (N, C, F) float32 features, F = FeatureSpec(...).dim, in FeatureSpec.names order.
    """
    n, c = candidates.shape
    d = Distributions.from_logits(q_logits, p_logits)
    position = torch.stack(list(position_columns(d).values()), dim=-1)  # (N, len(POSITION_FEATURES))
    token = torch.stack(list(token_columns(d, candidates).values()), dim=-1)  # (N, C, len(TOKEN_FEATURES))
    parts = [position[:, None, :].expand(n, c, -1), token]
    if lookahead is not None:
        parts.append(lookahead_features(lookahead)[:, None, :].expand(n, c, -1))
    for hidden in (drafter_hidden, target_hidden):
        if hidden is not None:
            parts.append(hidden.float()[:, None, :].expand(n, c, -1))
    return torch.cat(parts, dim=-1)


POSITION_FEATURES, TOKEN_FEATURES, LOOKAHEAD_FEATURES = _names_of_builders()
DRAFTER_FEATURES = tuple(drafter_columns(torch.ones(1, TOP_K), torch.zeros(1, 2)))  # names, read off a stand-in call
