"""The rules' target distributions π and the accept/resample step, as pure functions on fixed
distributions over a small vocabulary."""

from __future__ import annotations

import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import FeatureSpec
from deferral.probs import total_variation
from deferral.rules import HAND_SET_RULES, RULE_NAMES, Learned, make_rule
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
    out = rule.target(inputs(q, p))
    assert out.pi.shape == (16, V) and out.deferred.shape == (16,)
    assert (out.pi >= 0).all()
    torch.testing.assert_close(out.pi.sum(-1), torch.ones(16))


@pytest.mark.parametrize("rule", every_rule(), ids=repr)
def test_accept_resample_emits_pi_and_rejects_at_rate_tv(rule):
    """Draw a draft from q, keep it with min(1, π/q), else resample from norm(max(0, π − q)):
    the emitted token follows π and the rejection rate is D_TV(π, q) (paper, Lemma 3)."""
    q_logits, p_logits = random_logits(4, seed=1)
    d = inputs(q_logits, p_logits)
    pi = rule.target(d).pi  # (4, V): the token rules' π does not depend on the drafted token
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
    q, p = random_logits(32, seed=2)
    for temperature in (1.0, 0.7):
        d = inputs(q, p, temperature)
        torch.testing.assert_close(cls(cls.alpha_speculative).target(d).pi, d.p_sample)
        torch.testing.assert_close(cls(cls.alpha_drafter).target(d).pi, d.q_sample)
    assert cls.alpha_range[0] <= cls.alpha_drafter <= cls.alpha_range[1] or name == "opt"


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
