"""Through the real decode loop at temperature 1: the first emitted token follows π and the first
draft is rejected at rate D_TV(π, q), for every rule.

One batch of many identical prompts runs one step: each row is an independent draw (rows share a
generator but consume disjoint random numbers), so a single call yields thousands of samples.
"""

from __future__ import annotations

import pytest
import torch

from deferral.features import FeatureSpec
from deferral.pair import load_pair
from deferral.probs import total_variation
from deferral.rules import HAND_SET_RULES, Learned, make_rule
from inference.config import DecodeConfig
from inference.runner import encode_prompts, run
from inference.speculative import rule_inputs
from tests.stats_helpers import assert_rate, chi_square_pvalue
from tests.tiny_models import make_noisy_copy
from tests.single_thread import one_thread  # noqa: F401  (autouse)

ROWS = 3000
PROMPT = "def f(x):"


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory):
    """A target and a noisy copy of it as drafter: π differs from both q and p for most rules."""
    drafter = make_noisy_copy(tiny_dir / "target", tmp_path_factory.mktemp("noisy") / "d", noise=0.5, seed=2)
    return load_pair(str(drafter), str(tiny_dir / "target"))


def rules():
    col = FeatureSpec().names.index("p_tok")
    out = {name: make_rule(name) for name in ("target", "drafter", "speculative")}
    for name, cls in HAND_SET_RULES.items():
        out[name] = cls(0.5 if name not in ("diff", "token-v1", "token-v2") else 0.0)
    out["learned"] = Learned(lambda f: -f[:, col], threshold=-0.05)  # a stand-in scorer callable
    return out


@pytest.mark.parametrize("name", list(rules()))
def test_first_token_follows_pi_and_rejections_follow_tv(pair, name):
    rule = rules()[name]
    [prompt] = encode_prompts(pair, [PROMPT])
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        q_logits = pair.drafter.model(ids).logits[:, -1, : pair.vocab_size].float()
        p_logits = pair.target.model(ids).logits[:, -1, : pair.vocab_size].float()
    cfg = DecodeConfig(temperature=1.0, draft_tokens=1, max_new_tokens=1, seed=11)
    d = rule_inputs(q_logits, p_logits, torch.tensor([-1]), cfg)
    pi = rule.target(d).pi[0]  # (V,)

    gens = run(pair, rule, [prompt] * ROWS, cfg, batch_size=ROWS)
    first = torch.tensor([g.tokens[0] for g in gens])
    assert chi_square_pvalue(first, pi) > 1e-5
    if name not in ("target", "drafter"):  # the plain loops draft nothing
        rejected = sum(g.stats.accepted == 0 for g in gens)
        assert_rate(rejected, ROWS, float(total_variation(d.q_sample[0], pi)))


def test_the_pair_makes_these_checks_informative(pair):
    """π spreads over several tokens and the drafter disagrees with the target enough to reject."""
    [prompt] = encode_prompts(pair, [PROMPT])
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        q = torch.softmax(pair.drafter.model(ids).logits[0, -1, : pair.vocab_size], -1)
        p = torch.softmax(pair.target.model(ids).logits[0, -1, : pair.vocab_size], -1)
    assert float(p.max()) < 0.9 and int((p > 0.01).sum()) >= 5
    assert 0.1 < float(total_variation(q, p)) < 0.9
