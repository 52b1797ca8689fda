"""The rules' target distributions π and the accept/resample step, as pure functions on fixed
distributions over a small vocabulary."""

from __future__ import annotations

import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import FeatureSpec, block_lookahead, no_lookahead
from deferral.probs import total_variation
from deferral.rules import FLy, HAND_SET_RULES, RULE_NAMES, KLJudge, Learned, TypicalAcceptance, make_rule
from inference.acceptance import accept_drafts, residual_sample
from inference.config import DecodeConfig
from inference.speculative import rule_inputs
from tests.single_thread import one_thread  # noqa: F401  (autouse)
from tests.stats_helpers import assert_rate, chi_square_pvalue

V = 20  # >= the features' rank cap (16)
P_TOK = FeatureSpec().names.index("p_tok")


def random_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, V) drafter and target logits of varied sharpness, partly agreeing."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 4.0, n)[:, None]
    shared = torch.randn(n, V, generator=gen)
    q = scale * (shared + 0.8 * torch.randn(n, V, generator=gen))
    p = scale * (shared + 0.8 * torch.randn(n, V, generator=gen))
    return q, p


def inputs(q_logits, p_logits, temperature=1.0, drafted=None):
    drafted = drafted if drafted is not None else q_logits.argmax(-1)
    return rule_inputs(q_logits, p_logits, drafted, DecodeConfig(temperature=temperature))


def in_blocks(d, k=4):
    """Read the N positions as N / k drafted blocks of k and attach their look-ahead (for FLy)."""
    n, v = d.p_logits.shape
    d.lookahead = block_lookahead(d.p_logits.view(n // k, k, v), d.drafted.view(n // k, k))
    return d


def logits_of(rows) -> torch.Tensor:
    """Logits whose softmax is the given literal probability rows."""
    return torch.tensor(rows, dtype=torch.float32).log()


def stand_in_learned(alpha=0.0):
    """A learned rule whose 'router' is a plain feature: defer a candidate unless p(v) >= 10%."""
    return Learned(lambda f: -f[:, P_TOK], threshold=-0.10, alpha=alpha, candidates=3)


def every_rule():
    rules = [make_rule(n) for n in ("target", "drafter", "speculative")]
    rules += [cls(a) for cls in HAND_SET_RULES.values() for a in (cls.alpha_range[0] * 0.3 + cls.alpha_range[1] * 0.7,
                                                                   sum(cls.alpha_range) / 2)]
    return rules + [stand_in_learned(), stand_in_learned(alpha=0.5)]


@pytest.mark.parametrize("rule", every_rule(), ids=repr)
def test_pi_is_a_distribution(rule):
    q, p = random_logits(16, seed=0)
    out = rule.target(in_blocks(inputs(q, p)))
    assert out.pi.shape == (16, V) and out.deferred.shape == (16,)
    assert (out.pi >= 0).all()
    torch.testing.assert_close(out.pi.sum(-1), torch.ones(16))


@pytest.mark.parametrize("rule", every_rule(), ids=repr)
def test_accept_resample_emits_pi_and_rejects_at_rate_tv(rule):
    """Draw a draft from q, keep it with min(1, π/q), else resample from norm(max(0, π − q)):
    the emitted token follows π and the rejection rate is D_TV(π, q) (paper, Lemma 3)."""
    q_logits, p_logits = random_logits(4, seed=1)
    d = in_blocks(inputs(q_logits, p_logits))
    # (4, V): the token rules' π does not depend on the drafted token. FLy's decision does (on it and on
    # the drafts after it); here the block fixes them, so this checks the law of that fixed decision.
    pi = rule.target(d).pi
    m = 20000
    gen = torch.Generator().manual_seed(7)
    for pos in range(4):
        q_rows = d.q_sample[pos].expand(m, V)
        pi_rows = pi[pos].expand(m, V)
        drafts = torch.multinomial(q_rows, 1, generator=gen)  # (m, 1)
        kept = accept_drafts(pi_rows[:, None], q_rows[:, None], drafts, gen)  # (m,)
        emitted = torch.where(kept == 1, drafts[:, 0], residual_sample(pi_rows, q_rows, gen))
        assert chi_square_pvalue(emitted, pi[pos]) > 1e-5
        tv = float(total_variation(d.q_sample[pos], pi[pos]))
        assert_rate(int((kept == 0).sum()), m, tv)


def test_multi_draft_acceptance_stops_at_first_rejection():
    pi = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # (1, 3, 2)
    q = torch.full((1, 3, 2), 0.5)
    assert int(accept_drafts(pi, q, torch.tensor([[1, 1, 1]]), None)[0]) == 1  # the 2nd is impossible
    assert int(accept_drafts(pi, q, torch.tensor([[1, 0, 1]]), None)[0]) == 3
    assert int(accept_drafts(pi, q, torch.tensor([[0, 0, 1]]), None)[0]) == 0


@pytest.mark.parametrize("name", sorted(HAND_SET_RULES))
def test_alpha_ends_give_speculative_decoding_and_the_drafter(name):
    cls = HAND_SET_RULES[name]
    # Rules whose drafter end is unreachable with their defaults (KL's guard, FLy's window) name the
    # settings under which alpha_drafter is the drafter.
    drafter_settings = getattr(cls, "drafter_end_settings", {})
    q, p = random_logits(32, seed=2)
    for temperature in (1.0, 0.7, 0.0):
        d = in_blocks(inputs(q, p, temperature))
        torch.testing.assert_close(cls(cls.alpha_speculative).target(d).pi, d.p_sample)
        torch.testing.assert_close(cls(cls.alpha_drafter, **drafter_settings).target(d).pi, d.q_sample)
        if drafter_settings:  # with the defaults the most lenient α is not the drafter
            assert not torch.allclose(cls(cls.alpha_drafter).target(d).pi, d.q_sample)
    assert cls.alpha_range[0] <= cls.alpha_drafter <= cls.alpha_range[1] or name in ("opt", "kl")
    assert not cls.alpha_range[0] < cls.alpha_speculative < cls.alpha_range[1]


def test_learned_rule_ends_and_token_formula():
    q, p = random_logits(8, seed=3)
    d = inputs(q, p)
    never = Learned(lambda f: torch.ones(f.shape[0]), threshold=0.0)
    torch.testing.assert_close(never.target(d).pi, d.p_sample)  # nothing kept: speculative decoding
    always = Learned(lambda f: torch.zeros(f.shape[0]), threshold=0.0, candidates=V)
    torch.testing.assert_close(always.target(d).pi, d.q_sample)  # everything kept: the drafter
    # Stand-in scorer: the acceptable set is {v among q's top 3 : p(v) >= 10%}.
    out = stand_in_learned().target(d)
    top3 = torch.zeros(8, V, dtype=torch.bool).scatter(-1, d.q_conf.topk(3, -1).indices, True)
    acceptable = top3 & (d.p_conf >= 0.10)
    kept_q = d.q_sample * acceptable
    expected = kept_q + (1 - kept_q.sum(-1, keepdim=True)) * d.p_sample
    torch.testing.assert_close(out.pi, expected)
    torch.testing.assert_close(out.deferred, ~acceptable.gather(-1, d.drafted[:, None])[:, 0])


def test_token_v3_formula():
    q, p = random_logits(8, seed=4)
    d = inputs(q, p, temperature=0.8)
    alpha = 0.6
    acceptable = d.p_conf >= (1 - alpha) * d.p_conf.max(-1, keepdim=True).values  # unscaled p
    q_rej = (d.q_sample * ~acceptable).sum(-1, keepdim=True)
    torch.testing.assert_close(make_rule("token-v3", alpha).target(d).pi, d.q_sample * acceptable + q_rej * d.p_sample)


def test_confidence_terms_ignore_temperature():
    """Chow defers on the unscaled max q even when the temperature-scaled q is sharper."""
    q = torch.tensor([[2.0, 1.0] + [0.0] * (V - 2)])  # softmax max ~0.41 at T = 1
    p = torch.zeros(1, V)
    rule = make_rule("chow", 0.5)  # defer iff max q < 0.5
    assert bool(rule.target(inputs(q, p, temperature=1.0)).deferred[0])
    d_cold = inputs(q, p, temperature=0.1)
    assert float(d_cold.q_sample.max()) > 0.99  # the sampling view is nearly one-hot ...
    assert bool(rule.target(d_cold).deferred[0])  # ... yet the decision is the same


def test_greedy_distributions_are_one_hot_and_pi_mixes_them():
    q, p = random_logits(6, seed=5)
    d = inputs(q, p, temperature=0.0)
    assert ((d.q_sample == 0) | (d.q_sample == 1)).all() and (d.q_sample.sum(-1) == 1).all()
    out = make_rule("diff", 0.0).target(d)
    expected = torch.where(out.deferred[:, None], d.p_sample, d.q_sample)
    torch.testing.assert_close(out.pi, expected)


def test_lossy_is_more_lenient_than_lossless():
    q, p = random_logits(16, seed=6)
    d = inputs(q, p)
    tv_lossless = total_variation(d.q_sample, d.p_sample)
    previous = tv_lossless
    for alpha in (0.2, 0.5, 0.8):
        pi = make_rule("lossy", alpha).target(d).pi
        tv = total_variation(d.q_sample, pi)
        assert (tv <= previous + 1e-5).all()  # rejection probability falls as α grows
        # π never exceeds p/(1 − α) where it lies below q (the lenient acceptance cap)
        below = pi < d.q_sample - 1e-6
        assert (pi[below] <= (d.p_sample / (1 - alpha))[below] + 1e-5).all()
        previous = tv


def test_make_rule_names_and_errors():
    for name in RULE_NAMES:
        if name != "learned":
            assert make_rule(name).name == name
    with pytest.raises(DeferralError, match="unknown rule 'nope'"):
        make_rule("nope")
    with pytest.raises(DeferralError, match="--router"):
        make_rule("learned")
    with pytest.raises(DeferralError, match="candidate"):
        Learned(lambda f: f[:, 0], threshold=0.0, candidates=0)


def test_kl_judge_threshold_and_guard():
    # Row 0: KL(q || p) = 0.7 ln 1.4 + 0.2 ln(2/3) + 0.1 ln 0.5 = 0.0851 nats; target top-1 0.5.
    # Row 1: KL = 0.0039 nats, but the target is 95% sure: the guard (0.9) defers.
    q = logits_of([[0.7, 0.2, 0.1], [0.93, 0.04, 0.03]])
    p = logits_of([[0.5, 0.3, 0.2], [0.95, 0.03, 0.02]])
    d = inputs(q, p)
    for rule, deferred in [
        (KLJudge(0.09), [False, True]),
        (KLJudge(0.08), [True, True]),
        (KLJudge(0.09, guard=0.96), [False, False]),
        (KLJudge(0.005, guard=0.96), [True, False]),
        (KLJudge(0.003, guard=0.96), [True, True]),
        (KLJudge(-1.0, guard=1.0), [True, True]),
    ]:
        out = rule.target(d)
        assert out.deferred.tolist() == deferred, rule
        expected = torch.where(torch.tensor(deferred)[:, None], d.p_sample, d.q_sample)
        torch.testing.assert_close(out.pi, expected)
    assert make_rule("kl").guard == 0.9 and make_rule("kl").alpha == KLJudge.default_alpha
    with pytest.raises(DeferralError, match="guard"):
        KLJudge(0.5, guard=1.5)


def test_typical_acceptance_threshold_at_a_known_entropy():
    # p = (1/2, 1/4, 1/8, 1/8): H = 1.75 ln 2, exp(−H) = 2^−1.75 = 0.2973. Keep v iff
    # p(v) > min(ε, sqrt(ε)·0.2973) with ε = 1 − α.
    p = logits_of([[0.5, 0.25, 0.125, 0.125]])
    q = logits_of([[0.1, 0.2, 0.3, 0.4]])  # drafted: token 3
    d = inputs(q, p)
    for alpha, kept in [
        (1.0, [0, 1, 2, 3]),  # ε = 0: everything (the drafter)
        (0.96, [0, 1, 2, 3]),  # ε = 0.04 binds: τ = 0.04
        (0.91, [0, 1, 2, 3]),  # Medusa's default ε = 0.09, δ = 0.3: τ = min(0.09, 0.0892) = 0.0892
        (0.75, [0, 1]),  # ε = 0.25, δ = 0.5: τ = min(0.25, 0.1487) = 0.1487
        (0.19, [0]),  # ε = 0.81, δ = 0.9: τ = 0.2676
        (0.0, [0]),  # ε = 1: τ = exp(−H) = 0.2973, still keeps the argmax
        (-1.0, []),  # keep nothing: lossless speculative decoding
    ]:
        acceptable = torch.zeros(1, 4, dtype=torch.bool)
        acceptable[0, kept] = True
        kept_q = d.q_sample * acceptable
        expected = kept_q + (1 - kept_q.sum(-1, keepdim=True)) * d.p_sample
        out = TypicalAcceptance(alpha).target(d)
        torch.testing.assert_close(out.pi, expected, msg=f"alpha={alpha}")
        assert bool(out.deferred[0]) == (3 not in kept)
    assert make_rule("typical").alpha == pytest.approx(0.91)


HIGH = [0.4, 0.3, 0.2, 0.1]  # top-3 entropy 1.05 nats: the target is unsure
LOW_AT = {i: [0.97 if j == i else 0.01 for j in range(4)] for i in range(4)}  # top-3 entropy 0.12 nats


def fly_blocks(temperature):
    """Three blocks of 4 drafts, as a greedy drafter (argmax q = draft) would propose them.

    a: an unsure mismatch (target argmax 0, draft 1), then two drafts the target agrees with, then an
       unsure mismatch with nothing after it;
    b: the same mismatch, then one agreement and a disagreement: the target does not re-converge;
    c: a mismatch where the target is sure, then two agreements.
    """
    p_rows = [HIGH, LOW_AT[2], LOW_AT[3], HIGH,
              HIGH, LOW_AT[2], LOW_AT[3], HIGH,
              LOW_AT[0], LOW_AT[2], LOW_AT[3], HIGH]
    drafts = torch.tensor([[1, 2, 3, 1], [1, 2, 0, 1], [1, 2, 3, 1]])
    q_rows = [[0.7 if j == x else 0.1 for j in range(4)] for x in drafts.flatten().tolist()]
    d = inputs(logits_of(q_rows), logits_of(p_rows), temperature, drafted=drafts.flatten())
    return in_blocks(d), drafts


def test_fly_keeps_a_mismatch_only_where_the_target_is_unsure_and_reconverges():
    kept = torch.zeros(12, dtype=torch.bool)
    kept[0] = True  # only block a's first draft passes the gate
    for temperature in (1.0, 0.0):
        d, drafts = fly_blocks(temperature)
        out = FLy(0.3, window=2).target(d)
        assert out.deferred.tolist() == (~kept).tolist()
        # π = q where the draft is kept, p elsewhere (greedy: the draft, or the target's argmax)
        torch.testing.assert_close(out.pi, torch.where(kept[:, None], d.q_sample, d.p_sample))
    # Greedy, through accept/resample: block a keeps 3 drafts (the mismatch and the two agreements after it)
    # and replaces the tail mismatch by the target's argmax; lossless decoding keeps none there.
    gen = torch.Generator().manual_seed(0)
    n_kept = accept_drafts(out.pi.view(3, 4, -1), d.q_sample.view(3, 4, -1), drafts, gen)
    assert n_kept.tolist() == [3, 0, 0]
    at = torch.arange(3) * 4 + n_kept
    assert residual_sample(out.pi[at], d.q_sample[at], gen).tolist() == [0, 0, 0]
    exact = make_rule("speculative").target(d).pi
    assert accept_drafts(exact.view(3, 4, -1), d.q_sample.view(3, 4, -1), drafts, gen).tolist() == [0, 0, 0]
    # A lower gate lets the sure mismatch of block c through; a window of 1 lets block b's through.
    assert FLy(0.1, window=2).target(d).deferred.tolist()[8] is False
    assert FLy(0.3, window=1).target(d).deferred.tolist()[4] is False
    # A window of 3 needs 3 drafts after the position: none of these blocks re-converges that long.
    assert FLy(0.3, window=3).target(d).deferred.all()


def test_fly_without_lookahead_is_lossless_and_checks_its_window():
    d, _ = fly_blocks(temperature=1.0)
    d.lookahead = None
    for alpha in (0.0, 0.3):
        torch.testing.assert_close(FLy(alpha).target(d).pi, d.p_sample)
    # The bonus position (no drafted token, an empty look-ahead) defers when a window is asked for.
    d_bonus, _ = fly_blocks(temperature=1.0)
    d_bonus.drafted = torch.full_like(d_bonus.drafted, -1)
    d_bonus.lookahead = no_lookahead(12, "cpu")
    torch.testing.assert_close(FLy(0.0).target(d_bonus).pi, d_bonus.p_sample)
    # Window 0 needs no look-ahead: the entropy gate alone.
    assert not FLy(0.3, window=0).uses_lookahead and FLy(0.3).uses_lookahead
    top3_entropy = [1.05, 0.12, 0.12, 1.05, 1.05, 0.12, 0.12, 1.05, 0.12, 0.12, 0.12, 1.05]
    assert FLy(0.3, window=0).target(d).deferred.tolist() == [h < 0.3 for h in top3_entropy]
    with pytest.raises(DeferralError, match="window"):
        FLy(0.3, window=-1)
    d_short, _ = fly_blocks(temperature=1.0)
    with pytest.raises(DeferralError, match="wider than the look-ahead"):
        FLy(0.3, window=d_short.lookahead.agree.shape[1] + 1).target(d_short)


def test_per_token_gained_keeps_a_draft_iff_its_score_is_within_threshold_times_tokens_bought():
    """decision="per_token_gained": keep the drafted token iff score <= threshold * (1 + r), r the run of
    following drafts the target agrees with, counted here by hand from the argmaxes of each block."""
    k, n = 4, 64
    q, p = random_logits(n, seed=5)
    d = in_blocks(inputs(q, p, temperature=0.0), k=k)
    scores = torch.linspace(0.0, 1.2, n)  # one score per position, whatever the features
    scorer = lambda f: scores  # noqa: E731  (the rule scores one candidate, the drafted token, per position)
    rule = Learned(scorer, threshold=0.2, feature_spec=FeatureSpec(lookahead=True), decision="per_token_gained")
    kept = ~rule.target(d).deferred
    agree = (d.drafted == p.argmax(-1)).view(n // k, k)
    for b in range(n // k):
        for j in range(k):
            run = 0
            while j + 1 + run < k and agree[b, j + 1 + run]:
                run += 1
            i = b * k + j
            assert bool(kept[i]) == bool(scores[i] <= 0.2 * (1 + run)), (b, j, run)
    plain = ~Learned(scorer, threshold=0.2, feature_spec=FeatureSpec(lookahead=True)).target(d).deferred
    assert (plain == (scores <= 0.2)).all() and kept.sum() > plain.sum()  # the runs bought more keeps


def test_per_token_gained_needs_block_features_and_known_decisions():
    with pytest.raises(DeferralError, match="needs a router trained with block features"):
        Learned(lambda f: f[:, 0], threshold=0.1, decision="per_token_gained")
    with pytest.raises(DeferralError, match="unknown learned decision 'gain'"):
        Learned(lambda f: f[:, 0], threshold=0.1, feature_spec=FeatureSpec(lookahead=True), decision="gain")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("rule", every_rule(), ids=repr)
def test_defers_is_target_deferred(rule, temperature):
    """A rule's cheap decision equals the `deferred` of its full π, position by position."""
    q, p = random_logits(32, seed=7)
    d = in_blocks(inputs(q, p, temperature=temperature))
    assert torch.equal(rule.defers(d), rule.target(d).deferred)


@pytest.mark.parametrize("decision", Learned.DECISIONS)
def test_defers_of_a_block_router_is_target_deferred(decision):
    q, p = random_logits(32, seed=8)
    d = in_blocks(inputs(q, p, temperature=0.0))
    scores = torch.linspace(0.0, 1.0, 32)
    rule = Learned(lambda f: scores, threshold=0.3, feature_spec=FeatureSpec(lookahead=True), decision=decision)
    deferred = rule.target(d).deferred
    assert torch.equal(rule.defers(d), deferred) and 0 < deferred.float().mean() < 1
