"""The cost-quality sweep: which (rule, mode, knob, K) points to decode, how to decode one, and how
to summarise it as a results row. No file I/O here (the CLI, `inference.evaluate_cli`, owns that).

Every sweep starts with its three references: the target alone (whose time is the unit of relative
latency), the drafter alone and lossless speculative decoding at each K. Then each rule is swept
over its knob, speculatively at each K and as a sequential cascade. A row's relative latency comes
from the sweep's single pass (single_run_fields) until the timing stage (inference.timing) has
timed every point interleaved and repeated (timed_fields).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from deferral.errors import DeferralError
from deferral.pair import Pair
from deferral.rules import HAND_SET_RULES, DeferralRule, make_rule
from inference.config import DecodeConfig, Generation
from inference.runner import run
from inference.tasks.text_metrics import rouge_l

BASELINE = "baseline"  # mode of the target-only and drafter-only references
MODES = ("speculative", "sequential")
REFERENCE_RULES = ("target", "drafter", "speculative")


@dataclass(frozen=True)
class SweepPoint:
    """One decode of the task's prompts. `knob` is α, a threshold or a deferral rate (None for references)."""

    rule: str
    mode: str  # BASELINE, "speculative" or "sequential"
    knob_name: str = ""
    knob: float | None = None
    draft_tokens: int = 0  # K; 0 where the loop drafts no blocks (references, sequential cascades)

    @property
    def key(self) -> str:
        knob = f"{self.knob_name}={self.knob:g}" if self.knob is not None else "-"
        return f"{self.rule}|{self.mode}|{knob}|K={self.draft_tokens}"


def alpha_grid(rule: str, points: int) -> list[float]:
    """`points` values of α evenly spread over the rule's documented range, ends included."""
    if rule not in HAND_SET_RULES:
        raise DeferralError(f"'{rule}' has no α to sweep: hand-set rules are {', '.join(HAND_SET_RULES)}")
    if points < 2:
        raise DeferralError(f"--alpha-points must be at least 2 to span a range, got {points}")
    low, high = HAND_SET_RULES[rule].alpha_range
    return [round(low + (high - low) * i / (points - 1), 6) for i in range(points)]


def plan_sweep(
    rules: list[str],
    modes: list[str],
    draft_tokens: list[int],
    alphas: dict[str, list[float]],
    learned_knob: tuple[str, list[float]] | None = None,
    block_rules: frozenset[str] = frozenset(),
) -> list[SweepPoint]:
    """Every point to decode, references first (the target-only point is always the very first).

    Rules that read a drafted block (look-ahead: `fly`, and `learned` when named in block_rules)
    have no sequential form, so their sequential points are left out.
    """
    bad_modes = set(modes) - set(MODES)
    if bad_modes or not modes:
        raise DeferralError(f"unknown mode(s) {sorted(bad_modes)}: choose from {', '.join(MODES)}")
    if not draft_tokens or min(draft_tokens) < 1:
        raise DeferralError(f"--draft-tokens-list needs values >= 1, got {draft_tokens}")
    points = [SweepPoint("target", BASELINE), SweepPoint("drafter", BASELINE)]
    points += [SweepPoint("speculative", "speculative", draft_tokens=k) for k in draft_tokens]
    for rule in rules:
        if rule in REFERENCE_RULES:
            continue  # always included above
        if rule == "learned":
            if learned_knob is None:
                raise DeferralError("the learned rule needs --router and --deferral-rates or --thresholds")
            knob_name, values = learned_knob
        elif rule in HAND_SET_RULES:
            knob_name, values = "alpha", alphas.get(rule) or []
            if not values:
                raise DeferralError(f"no α values for rule '{rule}': set alphas.{rule} or --alpha-points")
        else:
            raise DeferralError(f"unknown rule '{rule}': choose from {', '.join([*HAND_SET_RULES, 'learned'])}")
        needs_block = rule in block_rules or (rule in HAND_SET_RULES and HAND_SET_RULES[rule].uses_lookahead)
        for mode in modes:
            if mode == "sequential" and needs_block:
                continue
            ks = draft_tokens if mode == "speculative" else [0]
            points += [SweepPoint(rule, mode, knob_name, float(v), k) for k in ks for v in values]
    return points


RuleFactory = Callable[[SweepPoint], DeferralRule]


def hand_set_rule(point: SweepPoint) -> DeferralRule:
    """The rule of a reference or hand-set point (the learned rule needs a router: see the CLI)."""
    return make_rule(point.rule, point.knob if point.knob_name == "alpha" else None)


def decode_point(
    pair: Pair, rule: DeferralRule, point: SweepPoint, prompts: list[list[int]], cfg: DecodeConfig, batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Generation], float]:
    """Decode all prompts at one point; returns the generations and the wall-clock seconds.
    `on_batch(n)` hears of each finished batch of n prompts."""
    k = point.draft_tokens or cfg.draft_tokens
    point_cfg = DecodeConfig(**{**asdict(cfg), "draft_tokens": k})
    start = time.perf_counter()
    generations = run(pair, rule, prompts, point_cfg, batch_size=batch_size, sequential=point.mode == "sequential",
                      on_batch=on_batch)
    return generations, time.perf_counter() - start


def warm_up(
    pair: Pair, prompts: list[list[int]], cfg: DecodeConfig, points: list[tuple[DeferralRule, SweepPoint]] | None = None
) -> None:
    """Run a short decode of the first prompt under each (rule, point) (default: lossless speculative
    decoding and the target) so that one-time costs (allocator, kernels, lazy init) do not land in a
    timed decode."""
    short = DecodeConfig(**{**asdict(cfg), "max_new_tokens": min(8, cfg.max_new_tokens)})
    points = points or [(make_rule("speculative"), SweepPoint("speculative", "speculative")),
                        (make_rule("target"), SweepPoint("target", BASELINE))]
    for rule, point in points:
        decode_point(pair, rule, point, prompts[:1], short, 1)


@torch.inference_mode()
def target_nll_per_token(pair: Pair, prompt: list[int], tokens: list[int]) -> float | None:
    """Mean negative log-likelihood (nats) the target gives to `tokens` after `prompt` (None if empty)."""
    if not tokens:
        return None
    ids = torch.tensor([prompt + tokens], device=pair.device)  # (1, T)
    logits = pair.target.model(ids).logits[0, len(prompt) - 1 : -1, : pair.vocab_size].float()  # (n, V)
    logp = torch.log_softmax(logits, -1)
    gathered = logp.gather(-1, torch.tensor(tokens, device=pair.device)[:, None])  # (n, 1)
    return float(-gathered.mean())


def fidelity(
    pair: Pair,
    prompts: list[list[int]],
    generations: list[Generation],
    replies: list[str],
    target_replies: list[str],
    seen: dict[tuple, float | None] | None = None,
) -> dict[str, float]:
    """Fidelity to the target: its NLL per generated token, ROUGE-L against its own greedy replies.

    `seen` keeps the NLL of every (prompt index, tokens) scored so far: a point whose reply to a prompt
    equals an earlier point's (lossless speculative decoding and the target, say) is not scored again.
    """
    seen = {} if seen is None else seen
    nlls = []
    for i, (prompt, generation) in enumerate(zip(prompts, generations)):
        key = (i, tuple(generation.tokens))
        if key not in seen:
            seen[key] = target_nll_per_token(pair, prompt, generation.tokens)
        nlls.append(seen[key])
    nlls = [x for x in nlls if x is not None]
    rouges = [rouge_l(r, t) for r, t in zip(replies, target_replies)]
    return {
        "target_nll": sum(nlls) / len(nlls) if nlls else float("nan"),
        "rouge_l_vs_target": sum(rouges) / len(rouges) if rouges else float("nan"),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def single_run_fields(wall_s: float, target_wall_s: float) -> dict:
    """A row's latency fields from the sweep's one pass over all prompts, point after point (not
    interleaved, not repeated: `timing_repeats` 0)."""
    return {"relative_latency": wall_s / target_wall_s if target_wall_s else 1.0, "relative_latency_low": None,
            "relative_latency_high": None, "timing_repeats": 0, "timing_prompts": 0, "timing_s": []}


def timed_fields(repeats: list[dict[str, float]], key: str, target_key: str, prompts: int) -> dict:
    """A row's latency fields from interleaved, repeated timing (inference.timing): in each repeat its
    seconds over the target's seconds; the median of those ratios is the relative latency, their
    lowest and highest the spread."""
    ratios = [r[key] / r[target_key] for r in repeats]
    return {"relative_latency": statistics.median(ratios), "relative_latency_low": min(ratios),
            "relative_latency_high": max(ratios), "timing_repeats": len(repeats), "timing_prompts": prompts,
            "timing_s": [r[key] for r in repeats]}


def summarize(
    point: SweepPoint,
    generations: list[Generation],
    wall_s: float,
    target_wall_s: float,
    metrics: dict[str, float],
    quality_key: str,
    quality_per_example: list[float] | None = None,
) -> dict:
    """One results row: quality, relative latency and the counters that explain it.

    quality_per_example: the quality metric of each prompt's reply, in prompt order (the report pairs
    it with the target's to give each point's difference from the target with a confidence interval).
    """
    total = {key: sum(getattr(g.stats, key) for g in generations)
             for key in ("new_tokens", "target_calls", "drafter_calls", "drafted", "accepted", "deferred", "examined")}
    if point.rule == "target":
        deferral_rate = 1.0
    elif point.rule == "drafter":
        deferral_rate = 0.0
    else:
        deferral_rate = ratio(total["deferred"], total["examined"])
    return {
        "key": point.key,
        "rule": point.rule,
        "mode": point.mode,
        "knob_name": point.knob_name,
        "knob": point.knob,
        "draft_tokens": point.draft_tokens,
        "quality": metrics[quality_key],
        "quality_key": quality_key,
        **single_run_fields(wall_s, target_wall_s),
        "wall_s": wall_s,
        "target_calls_per_token": ratio(total["target_calls"], total["new_tokens"]),
        "tokens_per_target_call": ratio(total["new_tokens"], total["target_calls"]),
        "deferral_rate": deferral_rate,
        "acceptance_rate": ratio(total["accepted"], total["drafted"]),
        "prompts": len(generations),
        **total,
        "metrics": metrics,
        "quality_per_example": [round(float(v), 6) for v in quality_per_example or []],
    }
