"""The speculative-cascade decode loop on tiny random models (saved and reloaded via from_pretrained).

Greedy decoding makes every rule deterministic, so the loop's bookkeeping (drafting, acceptance,
bonus tokens, rollback, left padding, holes in batched caches) is checked by exact token equality
against plain autoregressive decoding. Random tiny pairs rarely agree, so pairs whose drafter is
the target itself (every draft kept) or a noisy copy of it (some kept) exercise the acceptance paths.
"""

from __future__ import annotations

import time

import pytest
import torch

from deferral.errors import DeferralError
from deferral.pair import load_pair
from deferral.rules import HAND_SET_RULES, Learned, make_rule
from inference.autoregressive import autoregressive_generate
from inference.config import DecodeConfig, TokenSpace
from inference.runner import encode_prompts, length_order, run
from inference.speculative import SpeculativeDecoder, speculative_generate
from tests.tiny_models import make_noisy_copy
from tests.single_thread import one_thread  # noqa: F401  (autouse)

TEXTS = ["def add(a, b):\n    return", "x", "The quick brown fox jumps over"]  # 3 lengths: left padding


@pytest.fixture(scope="module")
def noisy_dir(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    make_noisy_copy(tiny_dir / "target", root / "target", noise=0.3, seed=0)
    make_noisy_copy(tiny_dir / "target_padded", root / "target_padded", noise=0.3, seed=1)
    return root


@pytest.fixture(scope="module")
def pairs(tiny_dir, noisy_dir):
    """name -> Pair: random drafter, the target as its own drafter, a noisy copy, a padded target."""
    t, tp = str(tiny_dir / "target"), str(tiny_dir / "target_padded")
    return {
        "random": load_pair(str(tiny_dir / "drafter"), t),
        "self": load_pair(t, t),
        "noisy": load_pair(str(noisy_dir / "target"), t),
        "padded": load_pair(str(tiny_dir / "drafter"), tp),
        "padded-noisy": load_pair(str(noisy_dir / "target_padded"), tp),
    }


def decode(pair, rule, texts=TEXTS, batch_size=1, sequential=False, **cfg):
    cfg = DecodeConfig(**{"max_new_tokens": 24, **cfg})
    prompts = encode_prompts(pair, texts)
    return run(pair, rule, prompts, cfg, batch_size=batch_size, sequential=sequential)


def tokens(gens):
    return [g.tokens for g in gens]


def acceptance(gens) -> float:
    return sum(g.stats.accepted for g in gens) / max(1, sum(g.stats.drafted for g in gens))


def test_padded_pair_uses_the_shared_token_range(pairs):
    pair = pairs["padded"]
    assert pair.target.vocab_rows == pair.drafter.vocab_rows + 8
    assert pair.vocab_size == pair.drafter.vocab_rows


@pytest.mark.parametrize("name", ["random", "self", "noisy", "padded", "padded-noisy"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_speculative_equals_target(pairs, name, k):
    pair = pairs[name]
    target = tokens(decode(pair, make_rule("target")))
    spec = decode(pair, make_rule("speculative"), draft_tokens=k)
    assert tokens(spec) == target
    assert all(0 < len(t) <= 24 for t in target)
    if name == "self":
        assert acceptance(spec) == 1.0  # every draft kept: bonus tokens and pending drafter tokens
    if name.endswith("noisy"):
        assert 0.05 < acceptance(spec) < 0.95  # a mix of kept and rejected drafts


def test_adaptive_drafting_is_lossless(pairs):
    for name in ("self", "noisy"):
        target = tokens(decode(pairs[name], make_rule("target")))
        for floor in (0.2, 0.6):
            gens = decode(pairs[name], make_rule("speculative"), draft_tokens=6, draft_confidence=floor)
            assert tokens(gens) == target
        gens = decode(pairs[name], make_rule("speculative"), draft_tokens=6, draft_schedule="heuristic")
        assert tokens(gens) == target
        gens = decode(pairs[name], make_rule("token-v3", -1.0), draft_tokens=4, draft_schedule="heuristic",
                      batch_size=3)
        assert tokens(gens) == target
        # a hand-set rule takes q at the bonus position from the adaptive look-ahead
        gens = decode(pairs[name], make_rule("chow", 0.0), draft_tokens=6, draft_confidence=0.4)
        assert tokens(gens) == target


def test_drafter_only_equals_drafters_greedy_output(pairs, tiny_dir):
    pair = pairs["noisy"]
    drafter_alone = load_pair(str(pair.drafter.source), str(pair.drafter.source))
    expected = tokens(decode(drafter_alone, make_rule("target")))
    assert tokens(decode(pair, make_rule("drafter"))) == expected
    # The cascade loop with π = q keeps every draft and also reproduces the drafter (for rules whose
    # drafter end needs other settings than their defaults, e.g. the KL judge's guard, with those).
    for rule in HAND_SET_RULES:
        cls = HAND_SET_RULES[rule]
        gens = decode(pair, cls(cls.alpha_drafter, **getattr(cls, "drafter_end_settings", {})), draft_tokens=3)
        assert tokens(gens) == expected, rule
        assert acceptance(gens) == 1.0


def blocks_then_target_token(pair, prompt: list[int], k: int, n: int) -> list[int]:
    """Reference for a rule that keeps every draft with the bonus token from the target: k greedy
    drafter tokens, then the target's greedy token, repeated (plain forwards, no cache)."""
    ids, out = list(prompt), []
    while len(out) < n:
        for model in [pair.drafter.model] * k + [pair.target.model]:
            token = int(model(torch.tensor([ids])).logits[0, -1, : pair.vocab_size].argmax())
            ids.append(token)
            out.append(token)
    return out[:n]


@pytest.mark.parametrize("engine", ["hf", "static"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_bonus_from_the_target_follows_a_fully_kept_block(pairs, engine, batch_size):
    pair, k, n = pairs["random"], 3, 14
    keep_all = make_rule("chow", 1.0)  # π = q: every draft kept, so every block ends in a bonus token
    with torch.inference_mode():
        expected = [blocks_then_target_token(pair, p, k, n) for p in encode_prompts(pair, TEXTS)]
    gens = decode(pair, keep_all, draft_tokens=k, max_new_tokens=n, stop_at_eos=False, bonus="target",
                  engine=engine, batch_size=batch_size)
    assert tokens(gens) == expected
    for g in gens:  # beside the prefill forwards (as many for both models), k drafter forwards per block, none more
        steps = g.stats.drafted // k
        assert g.stats.drafter_calls - k * steps == g.stats.target_calls - steps
    # with the bonus from the rule's π (= q here) the drafter alone is reproduced instead
    drafter_alone = tokens(decode(pair, make_rule("drafter"), max_new_tokens=n, stop_at_eos=False))
    assert tokens(decode(pair, keep_all, draft_tokens=k, max_new_tokens=n, stop_at_eos=False, engine=engine,
                         batch_size=batch_size)) == drafter_alone != expected


def test_bad_bonus_source_is_refused():
    with pytest.raises(DeferralError, match="--bonus must be one of rule, target"):
        DecodeConfig(bonus="drafter")


@pytest.mark.parametrize("rule", sorted(HAND_SET_RULES))
def test_hand_set_rule_at_speculative_end_equals_target(pairs, rule):
    cls = HAND_SET_RULES[rule]
    for name in ("noisy", "padded-noisy"):
        expected = tokens(decode(pairs[name], make_rule("target")))
        assert tokens(decode(pairs[name], cls(cls.alpha_speculative), draft_tokens=3)) == expected, name


def test_eos_stops_every_loop_alike(pairs):
    """Choose as EOS a token the target emits greedily; every loop stops right after it."""
    pair = pairs["noisy"]
    prompts = encode_prompts(pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=4)
    def space(eos_ids):
        return TokenSpace(vocab_size=pair.vocab_size, eos_ids=frozenset(eos_ids), pad_id=0, max_context=pair.max_context)

    free = autoregressive_generate(pair.target.model, prompts, cfg, space(()))
    eos = free[0].tokens[7]
    target = autoregressive_generate(pair.target.model, prompts, cfg, space({eos}))
    assert target[0].tokens == free[0].tokens[: free[0].tokens.index(eos) + 1]
    for rule in ("speculative", "token-v3", "opt"):
        r = make_rule(rule, HAND_SET_RULES[rule].alpha_speculative if rule in HAND_SET_RULES else None)
        spec = speculative_generate(pair.drafter.model, pair.target.model, r, prompts, cfg, space({eos}))
        assert tokens(spec) == tokens(target), rule
    # Rows that stop at EOS early hand their rows to waiting prompts: the same tokens with 2 rows at once.
    texts = TEXTS * 2
    prompts = encode_prompts(pair, texts)
    alone = autoregressive_generate(pair.target.model, prompts, cfg, space({eos}), slots=1)
    assert len({len(g.tokens) for g in alone}) > 1  # the rows do finish at different steps
    finished = []
    two = autoregressive_generate(pair.target.model, prompts, cfg, space({eos}), slots=2, on_finish=finished.append)
    assert tokens(two) == tokens(alone) and sum(finished) == len(texts)
    spec = speculative_generate(pair.drafter.model, pair.target.model, make_rule("speculative"), prompts, cfg,
                                space({eos}), slots=2)
    assert tokens(spec) == tokens(alone)


RULES_FOR_BATCHING = ["target", "drafter", "speculative", *sorted(HAND_SET_RULES), "learned"]


def build_rule(name):
    if name == "learned":
        # A stand-in scorer: defer a candidate token unless the target gives it >= 5% (feature p_tok).
        from deferral.features import FeatureSpec

        col = FeatureSpec().names.index("p_tok")
        return Learned(lambda f: -f[:, col], threshold=-0.05)
    cls = HAND_SET_RULES.get(name)
    return make_rule(name, None if cls is None else sum(cls.alpha_range) / 2 if name != "opt" else 0.5)


@pytest.mark.parametrize("name", RULES_FOR_BATCHING)
def test_batched_output_equals_one_by_one(pairs, name):
    pair = pairs["noisy"]
    rule = build_rule(name)
    alone = decode(pair, rule, draft_tokens=3)
    together = decode(pair, rule, draft_tokens=3, batch_size=3)
    assert tokens(together) == tokens(alone)
    assert [g.stats.accepted for g in together] == [g.stats.accepted for g in alone]


@pytest.mark.parametrize("name", ["target", "speculative", "token-v3"])
def test_batches_formed_by_length_come_back_in_prompt_order(pairs, name):
    """Batches of 2 over 4 prompts of 4 lengths: each batch holds prompts that are not neighbours in
    the input, and every prompt's tokens and counters still come back at its own index."""
    pair, rule = pairs["noisy"], build_rule(name)
    texts = ["if x:", *TEXTS]
    lengths = [len(p) for p in encode_prompts(pair, texts)]
    assert len(set(lengths)) == 4 and sorted(lengths, reverse=True) != lengths
    alone = decode(pair, rule, texts=texts, draft_tokens=3)
    paired = decode(pair, rule, texts=texts, draft_tokens=3, batch_size=2)
    assert tokens(paired) == tokens(alone)
    assert [(g.stats.accepted, g.stats.drafted) for g in paired] == [(g.stats.accepted, g.stats.drafted) for g in alone]


TEXTS_5 = ["if x:", *TEXTS, "import os\nimport sys\n"]


@pytest.mark.parametrize("engine", ["hf", "static"])
@pytest.mark.parametrize("name", ["speculative", "token-v3", "learned", "fly"])
def test_waiting_prompts_take_the_rows_of_finished_ones(pairs, name, engine):
    """2 rows over 5 prompts: rows finish at different steps and a waiting prompt joins mid-decode
    (its prefill fed while the other row feeds holes); tokens and counters equal one-by-one decoding."""
    pair, rule = pairs["noisy"], build_rule(name)
    alone = decode(pair, rule, texts=TEXTS_5, draft_tokens=3, engine=engine)
    finished = []
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=3, engine=engine)
    prompts = encode_prompts(pair, TEXTS_5)
    gens = run(pair, rule, prompts, cfg, batch_size=2, on_batch=finished.append)
    assert tokens(gens) == tokens(alone)
    assert [(g.stats.target_calls, g.stats.accepted) for g in gens] == \
        [(g.stats.target_calls, g.stats.accepted) for g in alone]
    assert sum(finished) == 5 and all(g.stats.wall_s > 0 for g in gens)


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_one_slot_refills_an_emptied_batch(pairs, engine):
    """With one row, every prompt joins a batch whose last row just left (caches of zero rows)."""
    pair = pairs["noisy"]
    prompts = encode_prompts(pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=3, engine=engine)
    space = TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context)
    one_slot = speculative_generate(pair.drafter.model, pair.target.model, make_rule("token-v3", 0.5), prompts, cfg,
                                    space, slots=1)
    assert tokens(one_slot) == tokens(decode(pair, make_rule("token-v3", 0.5), draft_tokens=3, engine=engine))


def test_a_decoder_with_slots_never_holds_more_rows_and_refills_mid_decode(pairs):
    pair = pairs["noisy"]
    prompts = encode_prompts(pair, TEXTS_5)
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=3)
    dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, make_rule("speculative"), prompts, cfg,
                             TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context), slots=2)
    steps, joined_at = 0, {}
    while dec.active:
        dec.step()
        steps += 1
        assert len(dec.state.active) <= 2 and dec.t_lm.valid.shape[0] == len(dec.state.active)
        for i in dec.state.active:
            joined_at.setdefault(i, steps)
    assert dec.finished == 5 and not dec.queue.waiting
    assert sorted(set(joined_at.values()))[-1] > 1  # someone joined after the first step


def test_a_joining_prompt_is_prefilled_alone_in_the_hf_cache(pairs):
    """The rows already decoding would only feed holes: the join's forward runs the joining row alone."""
    pair = pairs["noisy"]
    prompts = encode_prompts(pair, TEXTS_5)
    seen = []
    hook = pair.target.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                                   with_kwargs=True)
    try:
        gens = run(pair, make_rule("speculative"), prompts, DecodeConfig(max_new_tokens=24, draft_tokens=3, engine="hf"),
                   batch_size=2)
    finally:
        hook.remove()
    prefills = [shape for shape in seen if shape[1] > 4]  # wider than a verify pass [last, 3 drafts]
    assert prefills[0][0] == 2 and len(prefills) > 1  # the first two prompts together, then joins
    assert all(rows == 1 for rows, _ in prefills[1:])  # 2 slots: one prompt joins at a time
    assert tokens(gens) == tokens(decode(pair, make_rule("speculative"), texts=TEXTS_5, draft_tokens=3))


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_a_long_stream_of_joining_prompts_keeps_the_caches_bounded(pairs, engine):
    """12 prompts through 2 rows: every join leaves the other row's holes behind; the caches are
    packed so their width stays within a few rows' worth, and the tokens equal one-by-one decoding."""
    pair, k, new_tokens = pairs["noisy"], 3, 24
    texts = TEXTS_5 * 2 + TEXTS_5[:2]
    prompts = encode_prompts(pair, texts)
    cfg = DecodeConfig(max_new_tokens=new_tokens, draft_tokens=k, engine=engine)
    dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, make_rule("token-v3", 0.5), prompts, cfg,
                             TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context), slots=2)
    widest = 0
    while dec.active:
        dec.step()
        widest = max(widest, dec.t_lm.length, dec.d_lm.length)
    fullest_row = max(len(p) for p in prompts) + new_tokens + k + 2
    assert widest <= 3 * fullest_row
    alone = decode(pair, make_rule("token-v3", 0.5), texts=texts, draft_tokens=k, engine=engine, stop_at_eos=False)
    assert tokens(dec.state.results()) == tokens(alone)


@pytest.mark.parametrize("name", ["target", "token-v3"])
def test_sampled_prompt_draws_alike_whatever_prompts_follow_it(pairs, name):
    """At batch size 1 prompt i samples with seed + i, so a longer prompt after it (decoded first, as
    batches go longest first) changes nothing for it."""
    pair, rule = pairs["noisy"], build_rule(name)
    alone = decode(pair, rule, texts=["x = ["], draft_tokens=3, temperature=1.0, seed=4)
    followed = decode(pair, rule, texts=["x = [", "The quick brown fox jumps over"], draft_tokens=3,
                      temperature=1.0, seed=4)
    assert tokens(followed)[0] == tokens(alone)[0]


def test_length_order_is_longest_first_and_stable():
    assert length_order([[1], [1, 2, 3], [4], [1, 2]]) == [1, 3, 0, 2]


def test_batched_sampling_has_no_nans_in_padded_rows(pairs):
    """Left padding leaves fully masked query rows; they must not poison the caches with NaNs."""
    pair = pairs["noisy"]
    prompts = encode_prompts(pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=8, draft_tokens=3, temperature=1.0)
    dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, make_rule("speculative"), prompts, cfg,
                             TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context))
    dec.step()
    for lm in (dec.d_lm, dec.t_lm):
        for layer in lm.cache.layers:
            assert torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()


@pytest.mark.parametrize("name", ["chow", "diff", "token-v3", "lossy"])
def test_sequential_equals_speculative_greedily(pairs, name):
    pair = pairs["noisy"]
    rule = build_rule(name)
    spec = decode(pair, rule, draft_tokens=3)
    seq = decode(pair, rule, sequential=True)
    assert tokens(seq) == tokens(spec)


def fresh_cache(model, token_ids: list[int]):
    """The KV cache of one forward pass over `token_ids` (batch 1)."""
    with torch.inference_mode():
        out = model(torch.tensor([token_ids]), use_cache=True)
    return out.get("cache", None) or out.get("past_key_values")


def assert_same_cache(cache, reference) -> None:
    for layer, ref in zip(cache.layers, reference.layers):
        assert layer.keys.shape == ref.keys.shape
        torch.testing.assert_close(layer.keys, ref.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.values, ref.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,rule,temperature", [
    ("self", "speculative", 0.0),  # every draft kept: the drafter's pending token
    ("noisy", "speculative", 1.0),
    ("noisy", "token-v3", 1.0),  # bonus via one more drafter forward
    ("self", "chow", 0.0),
])
def test_caches_equal_a_fresh_forward_after_each_step(pairs, name, rule, temperature):
    pair = pairs[name]
    [prompt] = encode_prompts(pair, TEXTS[:1])
    cfg = DecodeConfig(max_new_tokens=40, draft_tokens=3, temperature=temperature, seed=3)
    dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, build_rule(rule), [prompt], cfg,
                             TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context))
    for _ in range(5):
        dec.step()
        committed = prompt + dec.state.tokens[0]
        assert int(dec.last[0]) == committed[-1]
        assert_same_cache(dec.t_lm.cache, fresh_cache(pair.target.model, committed[:-1]))
        lacks = 1 if dec.pending is not None and int(dec.pending[0]) >= 0 else 0
        if lacks:
            assert int(dec.pending[0]) == committed[-2]
        assert_same_cache(dec.d_lm.cache, fresh_cache(pair.drafter.model, committed[: len(committed) - 1 - lacks]))
        assert bool(dec.t_lm.valid.all()) and bool(dec.d_lm.valid.all())  # batch 1 leaves no holes


def test_stats_count_calls_and_tokens(pairs):
    [gen] = decode(pairs["self"], make_rule("speculative"), texts=TEXTS[:1], draft_tokens=3)
    s = gen.stats
    assert s.new_tokens == len(gen.tokens) == 24
    assert s.accepted == s.drafted  # the target drafting for itself
    # prefill + one verification per step of 3 drafts and a bonus token
    assert s.target_calls == 1 + 6
    assert s.deferred == s.examined > 0
    assert s.wall_s > 0


def test_phase_timer_splits_a_step_without_changing_the_output(tiny_pair):
    """Timing the phases is observation only: greedy output is unchanged, and every phase ran."""
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.phases import PHASES, PhaseTimer
    from inference.runner import token_space
    from inference.speculative import speculative_generate

    tokens = token_space(tiny_pair)
    prompts = [[1, 2, 3, 4], [5, 6]]
    cfg = DecodeConfig(max_new_tokens=12)
    for rule in (make_rule("speculative"), make_rule("token-v3", 0.5)):
        timer = PhaseTimer()
        start = time.perf_counter()
        timed = speculative_generate(tiny_pair.drafter.model, tiny_pair.target.model, rule, prompts, cfg,
                                     tokens, phases=timer)
        wall = time.perf_counter() - start
        plain = speculative_generate(tiny_pair.drafter.model, tiny_pair.target.model, rule, prompts, cfg, tokens)
        assert [g.tokens for g in timed] == [g.tokens for g in plain]
        assert set(timer.seconds) == set(PHASES) and all(v > 0 for v in timer.seconds.values())
        # the phases split the call's own time: disjoint, none counted twice, nothing from before it
        total = sum(timer.seconds.values())
        assert total <= wall
        assert timer.shares() == pytest.approx({name: v / total for name, v in timer.seconds.items()})


# (pair, rule, α) where the rule keeps some mismatches and defers others on these prompts
@pytest.mark.parametrize("rule", [("token-v3", 0.9), ("kl", 1.5), ("opt", 5.0), ("learned", None)], ids=str)
def test_greedy_bonus_token_from_the_decision_equals_the_one_drawn_from_pi(pairs, rule):
    """Lenient rules keep whole blocks, so the bonus token after them comes from the rule's decision
    on the drafter's argmax; it equals the argmax of the full π, step for step."""
    pair = pairs["random"]
    prompts = encode_prompts(pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=3)
    built = build_rule("learned") if rule[0] == "learned" else make_rule(*rule)
    if rule[0] == "learned":
        built.threshold = 0.0  # keeps candidates the target gives >= 0%: every draft

    def decode_with(greedy_decisions):
        dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, built, prompts, cfg,
                                 TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context),
                                 greedy_decisions=greedy_decisions)
        finish, bonuses = dec._finish_step, []

        def counting(drafts, n_kept, *rest):  # rows that kept their whole block get a bonus token
            bonuses.append(int((n_kept == drafts.shape[1]).sum()))
            return finish(drafts, n_kept, *rest)

        dec._finish_step = counting
        while dec.active:
            dec.step()
        return dec.state.results(), sum(bonuses)

    (fast, bonuses), (full, _) = decode_with(True), decode_with(False)
    assert tokens(fast) == tokens(full)
    assert [g.stats.as_dict() | {"wall_s": 0} for g in fast] == [g.stats.as_dict() | {"wall_s": 0} for g in full]
    assert bonuses >= 5


@pytest.mark.parametrize("case", [("random", "token-v1", 0.0), ("random", "diff", 0.0), ("random", "opt", 0.0),
                                  ("random", "kl", 0.33), ("random", "typical", 0.5), ("random", "token-v3", 0.67),
                                  ("noisy", "token-v3", 0.17), ("noisy", "fly", 0.0)], ids=str)
def test_greedy_decisions_equal_the_full_acceptance_step(pairs, case):
    """At temperature 0 the loop asks a keep-or-defer rule for its decision only; the tokens and every
    counter equal those of the full step (π built, accept/resample), batched with left padding."""
    pair_name, *rule = case
    pair = pairs[pair_name]
    prompts = encode_prompts(pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=24, draft_tokens=4)

    def decode_with(greedy_decisions):
        dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, make_rule(*rule), prompts, cfg,
                                 TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context),
                                 greedy_decisions=greedy_decisions)
        while dec.active:
            dec.step()
        return dec.state.results()

    fast, full = decode_with(True), decode_with(False)
    assert tokens(fast) == tokens(full)
    assert [g.stats.as_dict() | {"wall_s": 0} for g in fast] == [g.stats.as_dict() | {"wall_s": 0} for g in full]
    drafted, accepted = sum(g.stats.drafted for g in fast), sum(g.stats.accepted for g in fast)
    deferred, examined = sum(g.stats.deferred for g in fast), sum(g.stats.examined for g in fast)
    assert 0 < accepted < drafted and 0 < deferred < examined, (drafted, accepted, deferred, examined)
