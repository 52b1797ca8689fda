"""Decoding settings and per-request statistics (plain dataclasses, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deferral.errors import DeferralError


@dataclass
class DecodeConfig:
    draft_tokens: int = 5  # K: tokens drafted per target call
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    stop_at_eos: bool = True
    # Adaptive drafting: stop a step's drafting early once the drafter's confidence (max q) at the
    # next position falls below this floor in every row (None = always draft K tokens).
    draft_confidence: float | None = None
    # Draft-length schedule: "constant" drafts K per step; "heuristic" starts at K, drafts 2 more
    # (up to K) after a step whose drafts were all kept and 1 fewer (down to 1) otherwise.
    draft_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.draft_tokens < 1:
            raise DeferralError(f"--draft-tokens must be at least 1, got {self.draft_tokens}")
        if self.temperature < 0:
            raise DeferralError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DeferralError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.draft_confidence is not None and not 0 <= self.draft_confidence <= 1:
            raise DeferralError(f"--draft-confidence must be in [0, 1], got {self.draft_confidence}")
        if self.draft_schedule not in ("constant", "heuristic"):
            raise DeferralError(f"--draft-schedule must be constant or heuristic, got '{self.draft_schedule}'")
        if self.max_new_tokens < 1:
            raise DeferralError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class RequestStats:
    """Counters for one prompt. `drafted`/`accepted` count draft tokens; `deferred` counts drafted
    positions the rule examined (up to the first rejection) where it deferred to the target."""

    new_tokens: int = 0
    target_calls: int = 0
    drafter_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    deferred: int = 0
    examined: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """One prompt's result: its new token ids and statistics."""

    tokens: list[int]
    stats: RequestStats
