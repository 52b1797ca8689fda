"""The fixed-size KV cache (inference/static_lm.py) against transformers' forward (inference/cached_lm.py).

Both run the same tiny random Llama models on CPU; CUDA graphs replay exactly the eager `_layers` call
these tests run (the graph path itself is checked on a GPU by benchmarks/bench_compare.py, whose
lossless rows must equal the target's greedy tokens).
"""

from __future__ import annotations

import pytest
import torch

from deferral.errors import DeferralError
from deferral.pair import load_pair
from deferral.rules import HAND_SET_RULES, make_rule
from inference.batch import left_pad
from inference.cached_lm import CachedLM
from inference.config import DecodeConfig, TokenSpace
from inference.engines import cache_capacity, open_lm, resolve_engine
from inference.runner import encode_prompts, run
from inference.speculative import SpeculativeDecoder
from inference.static_lm import StaticLM
from tests.single_thread import one_thread  # noqa: F401  (autouse)
from tests.tiny_models import make_noisy_copy

TEXTS = ["def add(a, b):\n    return", "x", "The quick brown fox jumps over"]  # 3 lengths: left padding


@pytest.fixture(scope="module")
def noisy_pair(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy-static")
    make_noisy_copy(tiny_dir / "target", root / "target", noise=0.3, seed=0)
    return load_pair(str(root / "target"), str(tiny_dir / "target"))


def run_both(model, script, capacity=64):
    """Feed the same calls to transformers' forward and to the static cache; compare every output
    (and the cache layout while the static cache has not packed its rows)."""
    ref, static = CachedLM(model, 200), StaticLM(model, 200, 3, capacity)
    for call, args in script:
        out_ref, out_static = getattr(ref, call)(*args), getattr(static, call)(*args)
        if call == "forward":
            real = fed_positions(*args)  # outputs at padding are not defined
            torch.testing.assert_close(out_static[real], out_ref[real], atol=1e-5, rtol=1e-4)
            if ref.hidden is not None:
                real = fed_positions(args[0], args[1])
                torch.testing.assert_close(static.hidden[real], ref.hidden[real], atol=1e-5, rtol=1e-4)
        assert torch.equal(static.positions, ref.positions)
        assert static.valid.sum(-1).tolist() == ref.valid.sum(-1).tolist()
        if static.capacity == capacity and static.length == ref.length:
            assert torch.equal(static.valid, ref.valid)
    return static


def fed_positions(tokens, valid=None, last_only=False, want_hidden=False) -> torch.Tensor:
    """(B, n) or, with last_only, (B, 1) bool: the output positions a real token was fed at."""
    valid = torch.ones_like(tokens) if valid is None else valid
    return (valid[:, -1:] if last_only else valid).bool()


def holes_script(model):
    """Left-padded prefill, a block of drafts, ragged rollback (holes), a 2-token feed with a padded
    first column, a finished row leaving, and more decoding over the holes."""
    ids, valid = left_pad([[5, 6, 7, 8], [9], [10, 11]], 0, torch.device("cpu"))
    block = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    return [
        ("forward", (ids, valid)),
        ("forward", (block, None, False, True)),
        ("rollback", (4, torch.tensor([1, 4, 0]))),
        ("forward", (torch.tensor([[3, 4], [0, 5], [0, 6]]), torch.tensor([[1, 1], [0, 1], [0, 1]]), True)),
        ("rollback", (2, torch.tensor([2, 1, 2]))),
        ("select_rows", (torch.tensor([0, 2]),)),
        ("forward", (torch.tensor([[7, 8, 9], [10, 11, 12]]),)),
        ("rollback", (3, torch.tensor([0, 3]))),
        ("forward", (torch.tensor([[13], [14]]), None, True, True)),
        # a prompt joins: its row is added and its prefill fed while the others feed padding
        ("add_rows", (1,)),
        ("forward", (torch.tensor([[0, 0], [0, 0], [21, 22]]), torch.tensor([[0, 0], [0, 0], [1, 1]]), True)),
        ("forward", (torch.tensor([[15], [16], [23]]),)),
    ]


def test_static_cache_equals_transformers_forward_through_holes(tiny_pair):
    model = tiny_pair.target.model
    run_both(model, holes_script(model))


def test_a_full_cache_packs_its_rows_and_grows(tiny_pair):
    """Capacity 12 forces packing the holes away (and then more room) mid-script: outputs unchanged."""
    model = tiny_pair.target.model
    static = run_both(model, holes_script(model) + [("forward", (torch.tensor([[1, 2, 3, 4, 5]] * 3),))], capacity=12)
    assert static.capacity > 12 and bool(static.valid.all(0).any())  # packed: no column is a hole in every row


def test_graphs_keep_finished_rows_as_dead_rows(tiny_pair):
    """With graphs on, a finished row stays in the buffers (masked); the live rows' outputs are the same."""
    model = tiny_pair.target.model
    static = StaticLM(model, 200, 3, 64)
    static.keep_dead_rows = True  # as with graphs on; the CPU runs the same layers eagerly
    ref = CachedLM(model, 200)
    for call, args in holes_script(model):
        out_ref, out_static = getattr(ref, call)(*args), getattr(static, call)(*args)
        if call == "forward":
            real = fed_positions(*args)
            torch.testing.assert_close(out_static[real], out_ref[real], atol=1e-5, rtol=1e-4)
    assert static.keys[0].shape[0] == 3 and len(static.rows) == 3  # the joining prompt took the dead row


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("rule", ["target", "drafter", "speculative", *sorted(HAND_SET_RULES)])
def test_every_rule_decodes_alike_on_both_engines(noisy_pair, rule, batch_size):
    prompts = encode_prompts(noisy_pair, TEXTS)
    built = make_rule(rule) if rule in ("target", "drafter", "speculative") else make_rule(rule, 0.3)
    out = {engine: [g.tokens for g in run(noisy_pair, built, prompts, DecodeConfig(max_new_tokens=20, draft_tokens=3,
                                                                                       engine=engine),
                                          batch_size=batch_size)]
           for engine in ("hf", "static")}
    assert out["static"] == out["hf"]


def test_static_speculative_equals_static_target_and_sequential(noisy_pair):
    prompts = encode_prompts(noisy_pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=30, draft_tokens=4, engine="static")
    target = [g.tokens for g in run(noisy_pair, make_rule("target"), prompts, cfg, batch_size=3)]
    assert [g.tokens for g in run(noisy_pair, make_rule("speculative"), prompts, cfg, batch_size=3)] == target
    rule = make_rule("token-v3", 0.5)
    assert [g.tokens for g in run(noisy_pair, rule, prompts, cfg, sequential=True)] == \
        [g.tokens for g in run(noisy_pair, rule, prompts, cfg)]


def test_static_caches_equal_a_fresh_forward_after_each_step(noisy_pair):
    pair = noisy_pair
    [prompt] = encode_prompts(pair, TEXTS[:1])
    cfg = DecodeConfig(max_new_tokens=40, draft_tokens=3, temperature=1.0, seed=3, engine="static")
    dec = SpeculativeDecoder(pair.drafter.model, pair.target.model, make_rule("token-v3", 0.5), [prompt], cfg,
                             TokenSpace(pair.vocab_size, frozenset(), 0, pair.max_context))
    for _ in range(5):
        dec.step()
        committed = prompt + dec.state.tokens[0]
        lacks = 1 if dec.pending is not None and int(dec.pending[0]) >= 0 else 0
        for lm, model, fed in ((dec.t_lm, pair.target.model, committed[:-1]),
                               (dec.d_lm, pair.drafter.model, committed[: len(committed) - 1 - lacks])):
            with torch.inference_mode():
                out = model(torch.tensor([fed]), use_cache=True)
            fresh = out.get("cache", None) or out.get("past_key_values")
            assert lm.length == len(fed) and bool(lm.valid.all())
            for keys, values, ref in zip(lm.keys, lm.values, fresh.layers):
                torch.testing.assert_close(keys[:, :, : lm.length], ref.keys, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(values[:, :, : lm.length], ref.values, atol=1e-5, rtol=1e-4)


def test_padded_rows_leave_no_nans_in_the_static_cache(noisy_pair):
    prompts = encode_prompts(noisy_pair, TEXTS)
    cfg = DecodeConfig(max_new_tokens=8, draft_tokens=3, temperature=1.0, engine="static")
    dec = SpeculativeDecoder(noisy_pair.drafter.model, noisy_pair.target.model, make_rule("speculative"), prompts,
                             cfg, TokenSpace(noisy_pair.vocab_size, frozenset(), 0, noisy_pair.max_context))
    dec.step()
    for lm in (dec.d_lm, dec.t_lm):
        assert all(bool(torch.isfinite(k).all() and torch.isfinite(v).all()) for k, v in zip(lm.keys, lm.values))


def test_engine_choice_and_its_errors(tiny_pair, tmp_path):
    model = tiny_pair.target.model
    assert resolve_engine("auto", model) == "hf"  # CPU: transformers' forward
    assert isinstance(open_lm(model, 200, "static", [[1, 2]], 8), StaticLM)
    assert isinstance(open_lm(model, 200, "hf", [[1, 2]], 8), CachedLM)
    with pytest.raises(DeferralError, match="needs a CUDA device"):
        resolve_engine("graphs", model)
    with pytest.raises(DeferralError, match="unknown --engine 'fast'"):
        DecodeConfig(engine="fast")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(DeferralError, match="Llama-architecture models only.*'gpt2': use --engine hf"):
        resolve_engine("static", gpt2)
    assert resolve_engine("auto", gpt2) == "hf"
    assert cache_capacity([[1] * 10, [1] * 70], max_new_tokens=100, draft_tokens=5) % 64 == 0


def test_generate_cli_takes_the_engine_flag(tiny_dir, capsys):
    from deferral.cli import main

    args = ["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
            "--prompt", "def f(x):", "--rule", "speculative", "--max-new-tokens", "8"]
    assert main(args + ["--engine", "static"]) == 0
    static = capsys.readouterr().out
    assert main(args + ["--engine", "hf"]) == 0
    assert capsys.readouterr().out == static
    assert main(args + ["--engine", "graphs"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_check_engines_script_compares_engines(tiny_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import check_engines

    args = ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"), "--engines", "static,hf",
            "--rules", "target,speculative,token-v3:0.5", "--prompts", "3", "--prompt-chars", "80",
            "--max-new-tokens", "12",
            "--batch-sizes", "1,3"]
    assert check_engines.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("same tokens as static: hf 3/3") == 6
    assert out.count("equal to the target on every engine: yes") == 4
    assert check_engines.main(args[:-2] + ["--prompt-chars", "600"]) == 2  # too long for the tiny context
    assert "error: a prompt has" in capsys.readouterr().err


def test_graphed_caches_are_handed_to_the_next_loop_and_never_shared(tiny_pair):
    """The pool behind the graphs engine (CPU here: the same objects, eager): a cache whose loop is
    gone is reused, one whose loop is alive never is, and more loops than the pool size all get one."""
    import gc

    from inference.engines import POOL_SIZE, _graphed_lm

    class Loop:  # stands for a decode loop's state, the owner of its caches
        pass

    model = tiny_pair.target.model
    loops = [Loop() for _ in range(POOL_SIZE + 2)]
    caches = [_graphed_lm(model, 200, 2, 64, loop) for loop in loops]
    assert len({id(c) for c in caches}) == len(loops)
    first = caches[0]
    del loops[0], caches
    gc.collect()
    again = _graphed_lm(model, 200, 2, 64, Loop())
    assert again is first and again.length == 0 and not bool(again.valid.any())
    assert _graphed_lm(model, 200, 3, 64, Loop()) is not first  # another batch size: another cache
