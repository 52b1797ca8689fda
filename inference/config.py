"""Decoding settings and per-request statistics (plain dataclasses, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deferral.cli_args import flag
from deferral.errors import DeferralError
from inference.engines import ENGINE_HELP, ENGINES

BONUS_SOURCES = ("rule", "target")


@dataclass
class DecodeConfig:
    """How a prompt is decoded; every field but stop_at_eos is a flag of generate, evaluate, calibrate and serve."""

    draft_tokens: int = flag(5, "K: tokens drafted per target call")
    temperature: float = flag(0.0, "sampling temperature; 0 = greedy")
    top_p: float = flag(1.0, "nucleus sampling mass (1 = off)")
    max_new_tokens: int = flag(128, "stop after this many new tokens")
    seed: int = flag(0, "random seed for drafting, acceptance and resampling")
    stop_at_eos: bool = True
    draft_confidence: float | None = flag(
        None, "adaptive drafting: stop a step's drafts early once the drafter's top probability falls below this "
              "in every row (K stays the maximum; default: always K)")
    draft_schedule: str = flag(
        "constant", "constant: K drafts per step; heuristic: 2 more (up to K) after a step that kept every draft, "
                    "1 fewer (down to 1) otherwise")
    draft_stop: str | None = flag(
        None, "a learned stop head (JSON from benchmarks/fit_stop_head.py): end a step's drafts once the chance "
              "that the block holds a rejected draft exceeds --draft-stop-risk in every row")
    draft_stop_risk: float = flag(0.5, "the stop head's risk level, in (0, 1); larger drafts longer blocks")
    engine: str = flag("auto", "how the models run: " + ENGINE_HELP)
    bonus: str = flag(
        "rule", "the extra token after a block whose drafts were all kept: rule = drawn from the rule's π there "
                "(the paper; a lossy rule then needs one more drafter forward), target = the target's own token "
                "(no extra forward; lossless speculative decoding does this either way)")

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
        if not 0 < self.draft_stop_risk < 1:
            raise DeferralError(f"--draft-stop-risk must be in (0, 1), got {self.draft_stop_risk}")
        if self.bonus not in BONUS_SOURCES:
            raise DeferralError(f"--bonus must be one of {', '.join(BONUS_SOURCES)}, got '{self.bonus}'")
        if self.engine not in ENGINES:
            raise DeferralError(f"unknown --engine '{self.engine}': choose one of {', '.join(ENGINES)}")
        if self.max_new_tokens < 1:
            raise DeferralError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class TokenSpace:
    """What every decode loop needs to know about the pair's tokens (inference.runner.token_space)."""

    vocab_size: int  # V: the shared vocabulary; both models' logits are cut to it
    eos_ids: frozenset[int]  # a row stops after committing any of these
    pad_id: int  # fills the left padding of a batch
    max_context: int  # positions the models attend to; a row stops before running out


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
