"""Loading a drafter/target pair: sources, shared vocabulary, refusals; one end-to-end check on the
real default target (slow)."""

from __future__ import annotations

import copy

import pytest
import torch

from deferral import pair as pair_module
from deferral.errors import DeferralError
from deferral.pair import load_model, load_pair
from tests.single_thread import one_thread  # noqa: F401  (autouse)


def test_tiny_pair_round_trips_through_from_pretrained(tiny_pair, tiny_dir):
    assert tiny_pair.vocab_size == len(tiny_pair.tokenizer)
    assert tiny_pair.max_context == 256
    ident = tiny_pair.identity()
    # a folder's weights hash: sha256 over the hex sha256 of each weight file (here one safetensors file)
    import hashlib

    for role in ("drafter", "target"):
        inner = hashlib.sha256((tiny_dir / role / "model.safetensors").read_bytes()).hexdigest()
        assert ident[role]["kind"] == "folder" and ident[role]["sha256"] == hashlib.sha256(inner.encode()).hexdigest()
    assert ident["drafter"]["tokenizer_sha256"] == ident["target"]["tokenizer_sha256"]
    assert not tiny_pair.target.model.training


def test_padded_embeddings_share_the_tokenizers_range(tiny_dir):
    pair = load_pair(str(tiny_dir / "target_padded"), str(tiny_dir / "drafter"))
    assert pair.drafter.vocab_rows == pair.target.vocab_rows + 8
    assert pair.vocab_size == pair.target.vocab_rows


def test_different_tokenizers_name_both_models(tiny_dir):
    with pytest.raises(DeferralError) as info:
        load_pair(str(tiny_dir / "other_tokenizer"), str(tiny_dir / "target"))
    message = str(info.value)
    assert "other_tokenizer" in message and "target" in message and "\n" not in message


@pytest.mark.parametrize("source,fragment", [
    ("/no/such/folder", "check the path"),
    ("./relative/missing", "check the path"),
    ("missing.gguf", "does not exist"),
])
def test_missing_sources(source, fragment):
    with pytest.raises(DeferralError, match=fragment):
        load_model(source, role="drafter")


def test_folder_without_config(tmp_path):
    with pytest.raises(DeferralError, match="no config.json"):
        load_model(str(tmp_path), role="target")


def test_gguf_needs_the_gguf_package(tmp_path, monkeypatch):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(16))
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(DeferralError, match="pip install"):
        load_model(str(fake))


def test_dtype_and_device_choices(tiny_dir):
    m = load_model(str(tiny_dir / "drafter"), dtype="bfloat16")
    assert next(m.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(DeferralError, match="unknown dtype"):
        load_model(str(tiny_dir / "drafter"), dtype="float8")
    with pytest.raises(DeferralError, match="device"):
        load_model(str(tiny_dir / "drafter"), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeferralError, match="--device cpu"):
            load_model(str(tiny_dir / "drafter"), device="cuda")


def test_default_drafter_resolution(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.delenv(pair_module.DRAFTER_ENV, raising=False)
    import deferral.assets

    monkeypatch.setattr(deferral.assets, "asset_roots", lambda: [tmp_path / "absent"])
    with pytest.raises(DeferralError, match="--drafter"):
        pair_module.default_drafter_source()
    monkeypatch.setenv(pair_module.DRAFTER_ENV, str(tiny_dir / "drafter"))
    assert pair_module.default_drafter_source() == str(tiny_dir / "drafter")


def test_default_target_override_must_exist(tmp_path, monkeypatch):
    from deferral.default_target import TARGET_ENV, default_target_gguf

    monkeypatch.setenv(TARGET_ENV, str(tmp_path / "nothing.gguf"))
    with pytest.raises(DeferralError, match=TARGET_ENV):
        default_target_gguf()


@pytest.mark.slow
def test_default_target_speculative_equals_target(tmp_path):
    """The real default target (fetched and dequantized once), with a 2-layer copy of it as drafter: greedy speculative decoding reproduces the target token for token."""
    from deferral.default_target import default_target_gguf
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.runner import encode_prompts, run

    target = load_model(str(default_target_gguf()), role="target")
    small = copy.deepcopy(target.model)
    # the first and the last layer: a crude drafter that still agrees with the target now and then
    small.model.layers = torch.nn.ModuleList([small.model.layers[0], small.model.layers[-1]])
    for i, layer in enumerate(small.model.layers):
        layer.self_attn.layer_idx = i
    small.config.num_hidden_layers = 2
    small.save_pretrained(tmp_path / "drafter")
    target.tokenizer.save_pretrained(tmp_path / "drafter")
    del small

    pair = load_pair(str(tmp_path / "drafter"), None)
    assert pair.vocab_size == 49152 and pair.target.model.config.num_hidden_layers == 30
    prompts = encode_prompts(pair, ["Write a Python function that reverses a string.", "What is 2 + 2?"], chat=True)
    cfg = DecodeConfig(draft_tokens=3, max_new_tokens=16)
    expected = [g.tokens for g in run(pair, make_rule("target"), prompts, cfg)]
    spec = run(pair, make_rule("speculative"), prompts, cfg, batch_size=2)  # drafts rejected: rollback
    assert [g.tokens for g in spec] == expected
    # The target drafting for itself: every draft kept, bonus tokens every step.
    pair.drafter = pair.target
    spec = run(pair, make_rule("speculative"), prompts, cfg, batch_size=2)
    assert [g.tokens for g in spec] == expected
    assert all(g.stats.accepted == g.stats.drafted > 0 for g in spec)
    # The static engine (our own pass over the real 30-layer GQA model, tied embeddings) gives the same
    # tokens, for the target alone and batched speculative decoding.
    static = DecodeConfig(draft_tokens=3, max_new_tokens=16, engine="static")
    assert [g.tokens for g in run(pair, make_rule("target"), prompts, static)] == expected
    assert [g.tokens for g in run(pair, make_rule("speculative"), prompts, static, batch_size=2)] == expected
