"""Block features (look-ahead over the drafted block, hidden states from the verify pass) and the
feature contract between a router export and the code that computes its features."""

from __future__ import annotations

import math

import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import (
    LOOKAHEAD_FEATURES,
    FeatureSpec,
    block_lookahead,
    compute_features,
    lookahead_features,
)
from deferral.router import Router, RouterConfig, save_router
from deferral.rules import Learned, make_rule
from inference.config import DecodeConfig
from inference.learned import load_learned_rule
from inference.runner import run
from tests.single_thread import one_thread  # noqa: F401  (autouse)


def test_lookahead_on_a_literal_block():
    """Three drafts over a 3-token vocabulary; hand-computed look-ahead of each position."""
    probs = torch.tensor([[[0.7, 0.2, 0.1],    # position 0: the target's argmax is token 0
                           [0.1, 0.8, 0.1],    # position 1: argmax 1
                           [0.3, 0.3, 0.4]]])  # position 2: argmax 2
    drafts = torch.tensor([[1, 1, 0]])  # draft 0 disagrees, draft 1 agrees, draft 2 disagrees
    ahead = block_lookahead(probs.log(), drafts, window=2)
    feats = lookahead_features(ahead)  # (3, 7)
    col = {name: i for i, name in enumerate(LOOKAHEAD_FEATURES)}
    # position 0 sees drafts 1 and 2: p = 0.8 (agrees), 0.3 (does not)
    assert feats[0, col["ahead_n"]] == 2
    assert feats[0, col["ahead_agree_next"]] == 1 and feats[0, col["ahead_agree_run"]] == 1
    assert feats[0, col["ahead_agree_frac"]] == pytest.approx(0.5)
    assert feats[0, col["ahead_logp_next"]] == pytest.approx(math.log(0.8), abs=1e-6)
    assert feats[0, col["ahead_logp_mean"]] == pytest.approx((math.log(0.8) + math.log(0.3)) / 2, abs=1e-6)
    assert feats[0, col["ahead_logp_min"]] == pytest.approx(math.log(0.3), abs=1e-6)
    # position 1 sees draft 2 only; position 2 sees nothing
    assert feats[1, col["ahead_n"]] == 1 and feats[1, col["ahead_agree_next"]] == 0
    assert feats[1, col["ahead_logp_next"]] == pytest.approx(math.log(0.3), abs=1e-6)
    assert feats[2].abs().sum() == 0


def test_spec_names_are_checked_one_by_one():
    spec = FeatureSpec(lookahead=True, target_hidden=3)
    stored = spec.to_dict()
    assert FeatureSpec.check_stored(stored) == spec
    renamed = {**stored, "names": [*stored["names"][:5], "renamed", *stored["names"][6:]]}
    with pytest.raises(DeferralError, match="feature 5 is 'renamed'"):
        FeatureSpec.check_stored(renamed)
    truncated = {**stored, "names": stored["names"][:-1]}
    with pytest.raises(DeferralError, match="stored layout has"):
        FeatureSpec.check_stored(truncated)
    with pytest.raises(DeferralError, match="no feature names"):
        FeatureSpec.check_stored({k: v for k, v in stored.items() if k != "names"})


def _export(folder, pair, spec: FeatureSpec, names=None, seed=0):
    torch.manual_seed(seed)
    router = Router(RouterConfig(num_features=spec.dim, hidden=8, layers=1, objective="regress"))
    feature_spec = spec.to_dict()
    if names is not None:
        feature_spec["names"] = names
    save_router(folder, router, {"feature_spec": feature_spec, "pair": pair.identity(), "objective": "regress",
                                 "candidates": 4})
    return folder


def test_a_router_with_renamed_or_missing_features_is_refused(tiny_pair, tmp_path):
    spec = FeatureSpec(lookahead=True)
    names = list(spec.names)
    names[spec.names.index("ahead_agree_run")] = "ahead_agreement_run"
    bad = _export(tmp_path / "renamed", tiny_pair, spec, names=names)
    with pytest.raises(DeferralError, match="'ahead_agreement_run' in the stored layout"):
        load_learned_rule(str(bad), tiny_pair, threshold=0.0)
    short = _export(tmp_path / "short", tiny_pair, spec, names=list(spec.names)[:-1])
    with pytest.raises(DeferralError, match="other features"):
        load_learned_rule(str(short), tiny_pair, threshold=0.0)


def test_the_rule_scores_only_candidates_its_log_described(tiny_pair, tmp_path):
    """Logs describe the drafted token (the drafter's argmax) only: an export asking for 4 candidates
    scores one, instead of feeding the router 'not the argmax' values it never saw in training."""
    rule = load_learned_rule(str(_export(tmp_path / "r", tiny_pair, FeatureSpec())), tiny_pair, threshold=0.0)
    assert rule.candidates == 1


class RecordingScorer:
    """A stand-in router that keeps every feature matrix it is asked to score."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, features):
        self.seen.append(features.clone())
        return torch.zeros(features.shape[0])


def test_decode_loop_passes_lookahead_and_hidden_states_of_the_verify_pass(tiny_pair):
    """The learned rule sees features equal to a fresh forward over prompt + drafts, with the target's
    hidden states and the look-ahead of the same block, and no second forward pass is needed."""
    width = int(tiny_pair.target.model.config.hidden_size)
    spec = FeatureSpec(lookahead=True, target_hidden=width)
    scorer = RecordingScorer()
    rule = Learned(scorer, threshold=-1e9, feature_spec=spec)  # defers everywhere: lossless
    assert rule.uses_lookahead and rule.hidden_needed == ("target",)
    prompt = tiny_pair.tokenizer("hello there", add_special_tokens=True)["input_ids"]
    cfg = DecodeConfig(max_new_tokens=12, draft_tokens=4)
    [gen] = run(tiny_pair, rule, [prompt], cfg)
    [plain] = run(tiny_pair, make_rule("target"), [prompt], cfg)
    assert gen.tokens == plain.tokens  # deferring everywhere equals target greedy decoding
    first = scorer.seen[0]  # (k, F) the first block, before any token was committed
    assert first.shape == (4, spec.dim)
    # Rebuild the first block: the drafter's greedy drafts from the prompt.
    drafts, ids = [], list(prompt)
    with torch.no_grad():
        for _ in range(4):
            logits = tiny_pair.drafter.model(torch.tensor([ids])).logits[0, -1, : tiny_pair.vocab_size]
            drafts.append(int(logits.argmax()))
            ids.append(drafts[-1])
        full = torch.tensor([prompt + drafts])
        q = tiny_pair.drafter.model(full).logits[0, len(prompt) - 1 : -1, : tiny_pair.vocab_size]
        out = tiny_pair.target.model(full, output_hidden_states=True)
        p = out.logits[0, len(prompt) - 1 : -1, : tiny_pair.vocab_size]
        hidden = out.hidden_states[-1][0, len(prompt) - 1 : -1]
    expected = compute_features(q, p, torch.tensor(drafts)[:, None], None, hidden,
                                block_lookahead(p[None], torch.tensor([drafts])))[:, 0]
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-4)


def test_block_routers_are_refused_by_the_sequential_cascade(tiny_pair):
    rule = Learned(RecordingScorer(), threshold=0.0, feature_spec=FeatureSpec(lookahead=True))
    with pytest.raises(DeferralError, match="drop --sequential"):
        run(tiny_pair, rule, [[5, 6, 7]], DecodeConfig(max_new_tokens=4), sequential=True)
