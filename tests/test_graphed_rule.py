"""The graphed decision's plumbing (inference/graphed_rule.py) on CPU: a graph replays a rule over copies
of the inputs' tensors, so a decision rebuilt from those copies must equal the rule's own, for every
rule and every optional input (hidden states, look-ahead). The capture itself needs a GPU and is
checked there by comparing the graphs engine's tokens with the static engine's."""

from __future__ import annotations

import pytest
import torch

from deferral.features import FeatureSpec, block_lookahead
from deferral.rules import HAND_SET_RULES, Learned, make_rule
from inference.config import DecodeConfig
from inference.graphed_rule import _inputs, _rebuild, graphed_decision
from inference.speculative import rule_inputs


def block(seed: int, b: int = 3, k: int = 4, v: int = 50, h: int = 8):
    """A verified block: q (B*k, V), p (B, k + 1, V), drafts (B, k), hidden states (B*k, H)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, k + 1, v, generator=g) * 3
    q = p[:, :k] + torch.randn(b, k, v, generator=g) * 2
    drafts = q.argmax(-1)
    return q.flatten(0, 1), p, drafts, torch.randn(b * k, h, generator=g), torch.randn(b * k, h, generator=g)


RULES = {name: (lambda n=name: make_rule(n, sum(HAND_SET_RULES[n].alpha_range) / 2)) for name in sorted(HAND_SET_RULES)}
RULES["learned"] = lambda: Learned(lambda f: -f[:, FeatureSpec().names.index("p_tok")], threshold=-0.05)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "hidden+lookahead"])
def test_a_decision_over_copied_inputs_equals_the_rules_own(name, extras):
    rule = RULES[name]()
    q, p, drafts, hq, hp = block(seed=len(name))
    k = drafts.shape[1]
    d = rule_inputs(q, p[:, :k].flatten(0, 1), drafts.flatten(), DecodeConfig(),
                    drafter_hidden=hq if extras else None, target_hidden=hp if extras else None,
                    lookahead=block_lookahead(p[:, :k], drafts) if extras or rule.uses_lookahead else None)
    tensors = _inputs(d)
    expected = {"q_logits", "p_logits", "drafted"} | ({"drafter_hidden", "target_hidden"} if extras else set())
    assert expected <= set(tensors)
    assert (d.lookahead is not None) == any(name.startswith("lookahead.") for name in tensors)
    rebuilt = _rebuild(d, {name: t.clone() for name, t in tensors.items()})
    assert rebuilt.temperature == d.temperature and rebuilt.top_p == d.top_p
    assert _inputs(rebuilt).keys() == tensors.keys()
    assert all(torch.equal(t, tensors[name]) for name, t in _inputs(rebuilt).items())
    assert torch.equal(rule.defers(rebuilt), rule.defers(d))


def test_a_rule_keeps_one_graphed_decision():
    rule = make_rule("token-v3", 0.5)
    assert graphed_decision(rule) is graphed_decision(rule)
    assert graphed_decision(make_rule("token-v3", 0.5)) is not graphed_decision(rule)
