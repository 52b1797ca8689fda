"""compute_features on literal distributions, each feature checked by name against a value worked out
by hand (ln 2 = L): a drafter q = (1/2, 1/4, 1/8, 1/8) and a target p = (1/4, 1/2, 1/8, 1/8) over four
tokens (the rest of a 16-token vocabulary has probability 0), scoring candidate token 0."""

from __future__ import annotations

import math

import pytest
import torch

from deferral.features import FeatureSpec, Lookahead, compute_features

L = math.log(2.0)
OFF = -1e4  # a logit whose probability is exactly 0 in float32 (and whose log stays finite)


def logits(probs: list[float], vocab: int = 16) -> torch.Tensor:
    return torch.tensor([[math.log(x) for x in probs] + [OFF] * (vocab - len(probs))])


EXPECTED = {
    "q_top1": 0.5, "q_top2": 0.25, "q_top3": 0.125, "q_top4": 0.125, "q_entropy": 1.75 * L, "q_margin": 0.25,
    "p_top1": 0.5, "p_top2": 0.25, "p_top3": 0.125, "p_top4": 0.125, "p_entropy": 1.75 * L, "p_margin": 0.25,
    "tv": 0.25, "kl_q_p": 0.25 * L, "kl_p_q": 0.25 * L,
    "p_at_q_argmax": 0.25, "q_at_p_argmax": 0.25, "argmax_agree": 0.0, "p_max_minus_q_max": 0.0,
    "q_tok": 0.5, "p_tok": 0.25, "log_q_tok": -L, "log_p_tok": -2 * L, "log_p_over_q_tok": -L,
    "accept_prob_tok": 0.5, "tok_is_q_argmax": 1.0, "tok_is_p_argmax": 0.0, "p_tok_over_p_max": 0.5,
    "q_tok_minus_p_max": 0.0, "p_tok_minus_p_max": -0.25, "log_rank_p_tok": L,  # one token (p = 1/2) ranks above
    # look-ahead of the literal block below: two drafts follow, the target agrees with the first only
    "ahead_n": 2.0, "ahead_agree_next": 1.0, "ahead_agree_run": 1.0, "ahead_agree_frac": 0.5,
    "ahead_logp_next": -1.0, "ahead_logp_mean": -1.5, "ahead_logp_min": -2.0,
}


def test_every_feature_equals_its_hand_computed_value():
    spec = FeatureSpec(lookahead=True, target_hidden=2)
    ahead = Lookahead(logp_next=torch.tensor([[-1.0, -2.0, 0.0, 0.0]]),
                      agree=torch.tensor([[True, False, False, False]]),
                      valid=torch.tensor([[True, True, False, False]]))
    hidden = torch.tensor([[3.0, -4.0]])
    out = compute_features(logits([0.5, 0.25, 0.125, 0.125]), logits([0.25, 0.5, 0.125, 0.125]),
                           torch.tensor([[0]]), target_hidden=hidden, lookahead=ahead)
    assert out.shape == (1, 1, spec.dim)
    values = dict(zip(spec.names, out[0, 0].tolist()))
    assert set(EXPECTED) | {"hp_0", "hp_1"} == set(values)  # every feature has a hand-computed value
    for name, expected in EXPECTED.items():
        assert values[name] == pytest.approx(expected, abs=1e-5), name
    assert (values["hp_0"], values["hp_1"]) == (3.0, -4.0)
