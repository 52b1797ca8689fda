"""Deferral rules: per position, turn the drafter's q and the target's p into the target distribution π.

A speculative cascade accepts a drafted token x with min(1, π(x)/q(x)) and resamples a rejection
from norm(max(0, π − q)) (see `inference.acceptance`). Every rule here only builds π:
- mixture rules (Chow, Diff, OPT, the ends): π = (1 − δ)·q + δ·p with a per-position δ ∈ {0, 1};
- token rules (TokenV1-3, learned): π(v) = q(v)·1[v ∈ A] + Q_rej·p(v), Q_rej = Σ_{u ∉ A} q(u),
  where A is the set of tokens the rule would keep;
- lossy speculative decoding: π(v) = max(min(q(v), p(v)/(1 − α)), p(v)/β), β normalising π.
Formulas follow Narasimhan et al. (ICLR 2025), Eqs. 2, 5, 10, 13-15 and Lemma 2.

Conventions (paper, App. C.1): q_sample/p_sample are temperature-scaled (one-hot at T = 0) and are
what π mixes; confidence terms (max q, max p, p(v)) use the plain softmax q_conf/p_conf.
"""

from __future__ import annotations

import functools
import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from deferral.errors import DeferralError
from deferral.features import FeatureSpec, Lookahead, agree_run, compute_features, no_lookahead
from deferral.probs import sampling_probs, softmax_fp32, total_variation


@dataclass
class StepDistributions:
    """What a rule sees at N positions (a batch of rows x drafted positions, flattened).

    q_logits, p_logits: (N, V) raw logits of drafter and target.
    drafted:            (N,) the drafted token at each position (-1 where there is none, e.g. bonus).
    temperature, top_p: the sampling settings the sampling distributions follow.
    drafter_hidden, target_hidden: optional (N, H) last hidden states, for routers that use them: the
        drafter's state that produced q, the target's state (from the verify pass) that produced p.
    lookahead: optional Lookahead over the drafted tokens after each position in its block (see
        deferral.features.block_lookahead); given to rules with `uses_lookahead`.
    Derived on first read and then kept (a rule that needs fewer builds fewer (N, V) tensors):
    q_sample, p_sample: (N, V) sampling distributions (temperature, top-p; one-hot at T = 0).
    q_conf, p_conf:     (N, V) confidence distributions (softmax at temperature 1).
    """

    q_logits: torch.Tensor
    p_logits: torch.Tensor
    drafted: torch.Tensor
    temperature: float = 1.0
    top_p: float = 1.0
    drafter_hidden: torch.Tensor | None = None
    target_hidden: torch.Tensor | None = None
    lookahead: Lookahead | None = None

    @functools.cached_property
    def q_sample(self) -> torch.Tensor:
        return sampling_probs(self.q_logits, self.temperature, self.top_p)

    @functools.cached_property
    def p_sample(self) -> torch.Tensor:
        return sampling_probs(self.p_logits, self.temperature, self.top_p)

    @functools.cached_property
    def q_conf(self) -> torch.Tensor:
        return softmax_fp32(self.q_logits)

    @functools.cached_property
    def p_conf(self) -> torch.Tensor:
        return softmax_fp32(self.p_logits)


@dataclass
class RuleOutput:
    """pi: (N, V) target distribution; deferred: (N,) bool, True where the drafted token is not
    kept unconditionally (δ = 1 for mixture rules, drafted ∉ A for token rules)."""

    pi: torch.Tensor
    deferred: torch.Tensor


def mixture(d: StepDistributions, defer: torch.Tensor) -> RuleOutput:
    """π = (1 − δ)·q + δ·p for a per-position decision δ: (N,) bool."""
    w = defer.float()[:, None]
    return RuleOutput(pi=(1 - w) * d.q_sample + w * d.p_sample, deferred=defer)


def drafted_column(d: StepDistributions, values: torch.Tensor) -> torch.Tensor:
    """(N,) the drafted token's entry of an (N, V) tensor (token 0 where none was drafted)."""
    return values.gather(-1, d.drafted.clamp_min(0)[:, None]).squeeze(-1)


def token_specific(d: StepDistributions, acceptable: torch.Tensor) -> RuleOutput:
    """π(v) = q(v)·1[v ∈ A] + Q_rej·p(v) for an acceptable set A given as an (N, V) bool mask."""
    kept_q = d.q_sample * acceptable
    q_rejected = (1.0 - kept_q.sum(-1, keepdim=True)).clamp_min(0.0)  # Q_rej: (N, 1)
    pi = kept_q + q_rejected * d.p_sample
    return RuleOutput(pi=pi, deferred=~drafted_column(d, acceptable))


class DeferralRule(ABC):
    """One deferral rule. Subclasses set the class attributes and implement `target`."""

    name: str = ""
    #: False where the deferral decision uses q alone, so a sequential cascade can skip the target.
    needs_target: bool = True
    #: the knob's documented range, and the values at which the rule becomes lossless speculative
    #: decoding and the drafter alone.
    alpha_range: tuple[float, float] = (0.0, 1.0)
    alpha_speculative: float = 0.0
    alpha_drafter: float = 1.0
    #: True where the rule reads StepDistributions.lookahead (the decode loop computes it only then;
    #: a sequential cascade, which has no drafted block, refuses such a rule).
    uses_lookahead: bool = False
    #: which last hidden states the rule reads: a subset of ("drafter", "target").
    hidden_needed: tuple[str, ...] = ()
    #: "target" or "drafter" where the rule is that model decoding alone (the runner then runs a plain
    #: autoregressive loop of it); None for every cascade.
    plain_model: str | None = None
    #: True where π = p at every position whatever the input (the decode loop then skips q for the
    #: bonus token and accepts a greedy draft by argmax match).
    lossless: bool = False

    #: True where `target` is a keep-or-defer decision about the drafted token (built by `mixture` or
    #: `token_specific`): at temperature 0 a draft is then kept iff the rule keeps it or it is the
    #: target's argmax, and the decode loop needs only `defers(d)`, not π.
    decides: bool = True

    def __init__(self, alpha: float | None = None):
        self.alpha = float(alpha) if alpha is not None else float(self.default_alpha)

    def defers(self, d: "StepDistributions") -> torch.Tensor:
        """(N,) bool, equal to target(d).deferred: where the drafted token is not kept. Rules override it
        to decide without building π over the vocabulary."""
        return self.target(d).deferred

    default_alpha: float = 0.5

    @abstractmethod
    def target(self, d: StepDistributions) -> RuleOutput: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"


class TargetOnly(DeferralRule):
    """δ ≡ 1: π = p (lossless speculative decoding; as a plain loop, the target alone)."""

    name = "target"
    plain_model = "target"
    lossless = True

    def target(self, d):
        return mixture(d, torch.ones_like(d.drafted, dtype=torch.bool))


class Speculative(TargetOnly):
    """The target's π (inherited) run as a cascade rather than alone: lossless speculative decoding."""

    name = "speculative"
    plain_model = None


class DrafterOnly(DeferralRule):
    """δ ≡ 0: π = q, every draft kept."""

    name = "drafter"
    needs_target = False
    plain_model = "drafter"

    def target(self, d):
        return mixture(d, torch.zeros_like(d.drafted, dtype=torch.bool))


# The paper's formulas, written once over named statistics (the feature names of deferral/features.py:
# q_top1 = max q, p_top1 = max p, q_tok / p_tok = q(v) / p(v) of a candidate v, tv = D_TV), so that the
# rules below and the router's baselines (training/router/baselines.py, on logged feature columns)
# compute the same numbers; they work on tensors and numpy arrays alike. A rule defers (or does not
# keep v) where its statistic exceeds α.
def chow_statistic(s):
    return 1.0 - s["q_top1"]


def diff_statistic(s):
    return s["p_top1"] - s["q_top1"]


def opt_margin(s, alpha: float):
    """OPT defers where this is > 0 (its statistic depends on α: TV can be 0 where max p != max q)."""
    return s["p_top1"] - s["q_top1"] - alpha * s["tv"]


def token_v1_statistic(s):
    return s["p_top1"] - s["q_tok"]


def token_v2_statistic(s):
    return s["p_top1"] - s["p_tok"]


def token_v3_statistic(s):
    return 1.0 - s["p_tok"] / s["p_top1"]


def _position_stats(d: StepDistributions) -> dict:
    """(N,) max q and max p of the confidence view."""
    return {"q_top1": d.q_conf.max(-1).values, "p_top1": d.p_conf.max(-1).values}


def _token_stats(d: StepDistributions) -> dict:
    """(N, V) q(v), p(v) of every token and (N, 1) max p, for the token rules."""
    return {"q_tok": d.q_conf, "p_tok": d.p_conf, "p_top1": d.p_conf.max(-1, keepdim=True).values}


def _drafted_stats(d: StepDistributions, *names: str) -> dict:
    """The `names` of _token_stats for the drafted token only: (N,) q(x), p(x), max p (the same
    numbers, gathered; only the distributions these need are built)."""
    make = {"q_tok": lambda: drafted_column(d, d.q_conf), "p_tok": lambda: drafted_column(d, d.p_conf),
            "p_top1": lambda: d.p_conf.max(-1).values}
    return {name: make[name]() for name in names}


class Chow(DeferralRule):
    """Eq. 2: defer iff max q < 1 − α.  α = 0: speculative decoding; α = 1: drafter."""

    name = "chow"
    needs_target = False
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.0), 0.0, 1.0

    def defers(self, d):
        return chow_statistic(_position_stats(d)) > self.alpha

    def target(self, d):
        return mixture(d, self.defers(d))


class Diff(DeferralRule):
    """Eq. 5: defer iff max q < max p − α.  α = −1: speculative decoding; α = 1: drafter."""

    name = "diff"
    alpha_range, alpha_speculative, alpha_drafter = (-1.0, 1.0), -1.0, 1.0
    default_alpha = 0.0

    def defers(self, d):
        return diff_statistic(_position_stats(d)) > self.alpha

    def target(self, d):
        return mixture(d, self.defers(d))


class Opt(DeferralRule):
    """Eq. 10 (plug-in of Lemma 4): defer iff max q < max p − α·D_TV(p, q).

    D_TV uses the sampling distributions. α → −∞: speculative decoding; α → +∞: drafter.
    """

    name = "opt"
    alpha_range, alpha_speculative, alpha_drafter = (-10.0, 10.0), -1e9, 1e9
    default_alpha = 0.5

    def defers(self, d):
        s = {**_position_stats(d), "tv": total_variation(d.q_sample, d.p_sample)}
        return opt_margin(s, self.alpha) > 0

    def target(self, d):
        return mixture(d, self.defers(d))


class TokenV1(DeferralRule):
    """Eq. 13: keep v iff q(v) ≥ max p − α.  α = −1: speculative decoding; α = 1: drafter."""

    name = "token-v1"
    alpha_range, alpha_speculative, alpha_drafter = (-1.0, 1.0), -1.0, 1.0
    default_alpha = 0.0

    def defers(self, d):
        return ~(token_v1_statistic(_drafted_stats(d, "q_tok", "p_top1")) <= self.alpha)

    def target(self, d):
        return token_specific(d, token_v1_statistic(_token_stats(d)) <= self.alpha)


class TokenV2(DeferralRule):
    """Eq. 14: keep v iff p(v) ≥ max p − α.  α = −1: speculative decoding; α = 1: drafter."""

    name = "token-v2"
    alpha_range, alpha_speculative, alpha_drafter = (-1.0, 1.0), -1.0, 1.0
    default_alpha = 0.0

    def defers(self, d):
        return ~(token_v2_statistic(_drafted_stats(d, "p_tok", "p_top1")) <= self.alpha)

    def target(self, d):
        return token_specific(d, token_v2_statistic(_token_stats(d)) <= self.alpha)


class TokenV3(DeferralRule):
    """Eq. 15: keep v iff p(v) ≥ (1 − α)·max p (a min-p set of the target).

    α = 1: drafter. α = 0 keeps only the target's argmax; any α < 0 keeps nothing, which is
    lossless speculative decoding (we use −1).
    """

    name = "token-v3"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.0), -1.0, 1.0

    def defers(self, d):
        return ~(token_v3_statistic(_drafted_stats(d, "p_tok", "p_top1")) <= self.alpha)

    def target(self, d):
        return token_specific(d, token_v3_statistic(_token_stats(d)) <= self.alpha)


class LossySpeculative(DeferralRule):
    """Lossy speculative decoding with lenience α (Leviathan et al. A.5; paper Lemma 2):
    π(v) = max(min(q(v), p(v)/(1 − α)), p(v)/β) with β ≥ 1 − α chosen so that Σ π = 1.
    α = 0: speculative decoding; α = 1: drafter."""

    name = "lossy"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.0), 0.0, 1.0
    decides = False  # π is not a keep-or-defer mixture: acceptance needs π itself
    _BISECTION_STEPS = 40

    def target(self, d):
        q, p = d.q_sample, d.p_sample
        if self.alpha >= 1.0:
            return mixture(d, torch.zeros_like(d.drafted, dtype=torch.bool))
        capped = torch.minimum(q, p / (1.0 - self.alpha))  # (N, V), sums to <= 1
        # Σ max(capped, t·p) is increasing in t = 1/β; find t in [0, 1/(1 − α)] with sum 1.
        lo = torch.zeros(q.shape[0], 1, device=q.device)
        hi = torch.full_like(lo, 1.0 / (1.0 - self.alpha))
        for _ in range(self._BISECTION_STEPS):
            mid = (lo + hi) / 2
            too_big = torch.maximum(capped, mid * p).sum(-1, keepdim=True) > 1.0
            hi = torch.where(too_big, mid, hi)
            lo = torch.where(too_big, lo, mid)
        pi = torch.maximum(capped, hi * p)
        pi = pi / pi.sum(-1, keepdim=True)
        drafted = d.drafted.clamp_min(0)[:, None]
        deferred = (pi.gather(-1, drafted) < q.gather(-1, drafted)).squeeze(-1)
        return RuleOutput(pi=pi, deferred=deferred)


Scorer = Callable[[torch.Tensor], torch.Tensor]
"""Maps (M, F) features to (M,) deferral scores; higher means 'defer'."""


DEFAULT_CANDIDATES = 1  # drafter top tokens the learned rule scores per position, unless its router says more


class Learned(DeferralRule):
    """A learned token rule: keep candidate v iff score(features(q, p, v)) ≤ threshold + α·D_TV(p, q).

    The score is evaluated for the drafter's `candidates` most likely tokens at each position, which
    makes the acceptable set A well defined whatever token was sampled; tokens outside that set are
    never kept unconditionally. With α = 0 this thresholds a classifier; with a loss-gap regressor
    and α > 0 it is a learned version of the paper's optimal rule (defer iff gap > α·D_TV).

    Decisions (`decision`, stored with the router):
    - "score": keep iff score ≤ limit (limit = threshold + α·D_TV).
    - "per_token_gained": keep iff score ≤ limit·(1 + r), r = the drafts right after this one that the
      target agrees with (`features.agree_run`, exact from the verify pass). Keeping a mismatch buys
      r + 1 tokens in its block for one token's harm, so this keeps the mismatches whose harm per token
      gained is lowest: a harm budget buys more tokens per target call. Needs the block features.
    """

    DECISIONS = ("score", "per_token_gained")

    name = "learned"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.0), 0.0, 0.0
    default_alpha = 0.0

    def __init__(
        self,
        scorer: Scorer,
        threshold: float,
        alpha: float = 0.0,
        candidates: int = DEFAULT_CANDIDATES,
        feature_spec: FeatureSpec | None = None,
        decision: str = "score",
    ):
        super().__init__(alpha)
        if candidates < 1:
            raise DeferralError(f"the learned rule needs at least 1 candidate token, got {candidates}")
        if decision not in self.DECISIONS:
            raise DeferralError(f"unknown learned decision '{decision}': use one of {', '.join(self.DECISIONS)}")
        if decision == "per_token_gained" and not (feature_spec and feature_spec.block_features):
            raise DeferralError("the per_token_gained decision reads the drafted block's look-ahead: "
                                "it needs a router trained with block features (a cascade log)")
        self.decision = decision
        self.scorer = scorer
        self.threshold = float(threshold)
        self.candidates = candidates
        self.feature_spec = feature_spec or FeatureSpec()
        self.uses_lookahead = self.feature_spec.lookahead
        self.hidden_needed = tuple(
            role for role, width in (("drafter", self.feature_spec.drafter_hidden),
                                     ("target", self.feature_spec.target_hidden)) if width
        )

    def _keep(self, d) -> tuple[torch.Tensor, torch.Tensor]:
        """(cand (N, C) token ids scored, keep (N, C) bool: the rule keeps that candidate)."""
        n, v = d.q_conf.shape
        if self.feature_spec.block_features:
            # Look-ahead describes the drafted token's own continuation: score that token only
            # (A = {x} or ∅); a position without a drafted token (the bonus) defers.
            cand = d.drafted.clamp_min(0)[:, None]  # (N, 1)
            ahead = d.lookahead if d.lookahead is not None else no_lookahead(n, d.q_logits.device)
        else:
            cand = d.q_conf.topk(min(self.candidates, v), -1).indices  # (N, C)
            ahead = None
        feats = compute_features(d.q_logits, d.p_logits, cand, d.drafter_hidden, d.target_hidden, ahead)
        scores = self.scorer(feats.reshape(-1, feats.shape[-1])).reshape(n, -1).float()  # (N, C)
        limit = self.threshold
        if self.alpha:  # TV costs a pass over (N, V): only when the rule reads it
            limit = limit + self.alpha * total_variation(d.q_sample, d.p_sample)[:, None]
        if self.decision == "per_token_gained":
            limit = limit * (1.0 + agree_run(ahead).to(scores.device))[:, None]  # (N, 1): tokens this keep buys
        keep = scores <= limit  # (N, C)
        if self.feature_spec.block_features:
            keep &= d.drafted[:, None] >= 0
        return cand, keep

    def target(self, d):
        cand, keep = self._keep(d)
        acceptable = torch.zeros(d.q_conf.shape, dtype=torch.bool, device=keep.device).scatter(-1, cand, keep)
        return token_specific(d, acceptable)

    def defers(self, d):
        cand, keep = self._keep(d)
        drafted = d.drafted.clamp_min(0)[:, None].to(cand.device)  # as token_specific reads it
        return ~((cand == drafted) & keep).any(-1)

    def __repr__(self) -> str:
        return (f"Learned(threshold={self.threshold}, alpha={self.alpha}, candidates={self.candidates}, "
                f"decision={self.decision!r})")


class KLJudge(DeferralRule):
    """KL judge ("Revisiting Judge Decoding", Jan 2026; research/anchors.md section 6): keep the drafted
    token (π = q) iff KL(q || p) ≤ α, except where the target's top-1 confidence exceeds `guard`
    (default 0.9), where it defers (π = p, exact acceptance). A mixture rule.

    KL(q || p) = Σ_v q(v)·(log q(v) − log p(v)) in nats, on the confidence view (softmax at T = 1).
    Knob α ≥ 0 in nats, larger is more lenient; documented range [0, 2]. Any α < 0 defers everywhere:
    lossless speculative decoding (we use −1). α = +∞ keeps every draft except where the guard fires,
    so with guard < 1 the drafter end is not reachable (`alpha_drafter` = +∞ is the most lenient
    setting); with guard = 1.0 (the guard never fires) α = +∞ is the drafter.
    """

    name = "kl"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 2.0), -1.0, float("inf")
    default_alpha = 0.5
    #: constructor settings under which alpha_drafter is exactly the drafter (the default guard is not).
    drafter_end_settings = {"guard": 1.0}

    def __init__(self, alpha: float | None = None, guard: float = 0.9):
        super().__init__(alpha)
        if not 0.0 <= guard <= 1.0:
            raise DeferralError(f"the KL judge's guard is a probability in [0, 1], got {guard}")
        self.guard = float(guard)

    def defers(self, d):
        logq = torch.log_softmax(d.q_logits.float(), -1)
        logp = torch.log_softmax(d.p_logits.float(), -1)
        q = logq.exp()
        kl = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)  # (N,)
        guarded = d.p_conf.max(-1).values > self.guard
        return (kl > self.alpha) | guarded

    def target(self, d):
        return mixture(d, self.defers(d))

    def __repr__(self) -> str:
        return f"KLJudge(alpha={self.alpha}, guard={self.guard})"


class TypicalAcceptance(DeferralRule):
    """Medusa typical acceptance (Cai et al. 2024, Medusa, Sec. 3.3.1; vLLM's TypicalAcceptanceSampler):
    keep v iff p(v) > min(ε, δ·exp(−H(p))), with δ = sqrt(ε) as in Medusa's defaults
    (posterior_threshold ε = 0.09, posterior_alpha δ = 0.3). A token rule (π via `token_specific`).

    p and its entropy H (nats) are the confidence view (softmax at T = 1; Medusa uses the
    temperature-scaled target). Knob α = 1 − ε, so larger α is more lenient; range [0, 1], default
    0.91 (Medusa's ε = 0.09). α = 1 (ε = 0) keeps every token: the drafter. α = 0 (ε = 1) is the
    strictest Medusa setting and still keeps every v with p(v) > exp(−H(p)) (the target's argmax
    unless p is uniform on its support), so the family never reaches π = p; any α < 0 keeps nothing,
    which is lossless speculative decoding (we use −1).
    """

    name = "typical"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.0), -1.0, 1.0
    default_alpha = 0.91

    def target(self, d):
        eps = 1.0 - self.alpha
        if eps > 1.0:  # α < 0: keep nothing
            return token_specific(d, torch.zeros_like(d.p_conf, dtype=torch.bool))
        if eps <= 0.0:  # α ≥ 1: keep everything
            return token_specific(d, torch.ones_like(d.p_conf, dtype=torch.bool))
        logp = torch.log_softmax(d.p_logits.float(), -1)
        p = logp.exp()
        entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1, keepdim=True)  # (N, 1)
        threshold = torch.clamp_max(math.sqrt(eps) * torch.exp(-entropy), eps)
        return token_specific(d, d.p_conf > threshold)


class FLy(DeferralRule):
    """Entropy-gated deferral with a look-ahead window, after FLy (Li et al., ICLR 2026, "Training-Free
    Loosely Speculative Decoding", AMD-AGI/FLy; vLLM's opt-in `fly` rejection method).

    Keep the drafted token x iff
      (1) the target is unsure there: its top-3 entropy H3(p) = −Σ_{i≤3} p_(i)·log p_(i) (nats, over
          the three largest probabilities of the confidence view; FLy's gate) is ≥ α, and
      (2) the target re-converges after x: it ranks first (argmax) each of the next `window` drafted
          tokens of the same block (`d.lookahead.agree` and `.valid`; default window 2, FLy's win_len 3).
    Where x is kept π = q, elsewhere π = p (exact acceptance): a mixture rule. (The token-rule form
    A = {x} keeps x just the same, since a draft in A is never rejected; π = q also makes the drafter
    end exact.) With window > 0, a position with fewer than `window` drafted tokens after it in its
    block (the block's tail; the bonus position, whose look-ahead is empty) is always deferred; FLy's
    reference code is one position stricter (it also defers the position with exactly `window` drafts
    after it). With window > 0 and `d.lookahead` None (a loop that computes no look-ahead) the rule
    defers everywhere: lossless speculative decoding.

    Meant for greedy decoding, as FLy is: at T = 0 exact acceptance keeps the target's argmax, so a draft
    is kept iff it is the target's argmax or passes the gate, and the first draft that is neither is
    replaced by the argmax. At T > 0 the loop runs the same accept/resample step, but the decision
    depends on the sampled draft and on the drafts after it, so the emitted token no longer follows one
    fixed π (it does where the decision cannot change: the speculative end, or window = 0). `deferred`
    counts every position the gate does not keep, including drafts that exact acceptance keeps.

    Knob α = the entropy threshold in nats (FLy's entropy_thre, default 0.3); larger is stricter. Range
    [0, 1.1] (H3 ≤ 3/e ≈ 1.10). α = 2 (> 3/e) never keeps: lossless speculative decoding. α = 0 passes
    the entropy gate everywhere but is not the drafter (the window still decides); with window = 0
    (then no look-ahead is needed) α = 0 is the drafter.
    """

    name = "fly"
    alpha_range, alpha_speculative, alpha_drafter = (0.0, 1.1), 2.0, 0.0
    default_alpha = 0.3
    uses_lookahead = True
    #: constructor settings under which alpha_drafter is exactly the drafter (the default window is not).
    drafter_end_settings = {"window": 0}
    ENTROPY_TOP_K = 3

    def __init__(self, alpha: float | None = None, window: int = 2):
        super().__init__(alpha)
        if window < 0:
            raise DeferralError(f"the FLy window counts drafted tokens after a position, got {window}")
        self.window = int(window)
        self.uses_lookahead = self.window > 0  # window 0: the entropy gate alone

    def target(self, d):
        return mixture(d, self.defers(d))

    def defers(self, d):
        logp = torch.log_softmax(d.p_logits.float(), -1)
        top = logp.topk(min(self.ENTROPY_TOP_K, logp.shape[-1]), -1).values  # (N, 3)
        top_entropy = -torch.where(top > -torch.inf, top.exp() * top, torch.zeros_like(top)).sum(-1)  # (N,)
        keep = top_entropy >= self.alpha
        if self.window > 0:
            ahead = d.lookahead
            if ahead is None:
                keep = torch.zeros_like(keep)
            else:
                if ahead.agree.shape[1] < self.window:
                    raise DeferralError(
                        f"FLy window {self.window} is wider than the look-ahead ({ahead.agree.shape[1]} positions)"
                    )
                converges = (ahead.agree[:, : self.window] & ahead.valid[:, : self.window]).all(-1)
                keep &= converges.to(keep.device)
        return ~keep

    def __repr__(self) -> str:
        return f"FLy(alpha={self.alpha}, window={self.window})"


HAND_SET_RULES: dict[str, type[DeferralRule]] = {
    cls.name: cls
    for cls in (Chow, Diff, Opt, TokenV1, TokenV2, TokenV3, LossySpeculative, KLJudge, TypicalAcceptance, FLy)
}
RULE_NAMES = ["target", "drafter", "speculative", *HAND_SET_RULES, "learned"]


def make_rule(name: str, alpha: float | None = None) -> DeferralRule:
    """Build a hand-set rule (or an end: target, drafter, speculative) by its command-line name."""
    fixed = {"target": TargetOnly, "drafter": DrafterOnly, "speculative": Speculative}
    if name in fixed:
        return fixed[name]()
    if name in HAND_SET_RULES:
        return HAND_SET_RULES[name](alpha)
    if name == "learned":
        raise DeferralError("the learned rule needs a router: pass --router DIR (see `deferral export`)")
    raise DeferralError(f"unknown rule '{name}': choose one of {', '.join(RULE_NAMES)}")


_ALPHA_WARNED: set[tuple[str, float]] = set()


def warn_alpha_outside_range(name: str, alpha: float | None, flag: str = "--alpha") -> bool:
    """One stderr line (once per rule and value) when an explicit α lies outside the rule's documented
    `alpha_range`; the rule's lossless and drafter-only values count as documented. True if it warned."""
    cls = HAND_SET_RULES.get(name) or (Learned if name == "learned" else None)
    if alpha is None or cls is None or (name, float(alpha)) in _ALPHA_WARNED:
        return False
    low, high = cls.alpha_range
    if low <= alpha <= high or alpha in (cls.alpha_speculative, cls.alpha_drafter):
        return False
    _ALPHA_WARNED.add((name, float(alpha)))
    print(f"warning: {flag} {alpha:g} is outside the documented range [{low:g}, {high:g}] of rule '{name}' "
          "(deferral/rules.py); decoding goes on with it", file=sys.stderr)
    return True
