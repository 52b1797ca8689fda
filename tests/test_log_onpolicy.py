"""On-policy logging: prompts from the corpus, continuations generated, then scored by both models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import compute_features
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import run
from tests.test_log import arrays, log_args, write_corpus
from training.logs import logged_data as fmt
from training.logs.corpora import open_corpus
from training.logs.log_cli import main as log_main

PROMPT, NEW = 8, 10


def test_rows_describe_the_targets_own_continuation(tiny_dir, tiny_pair, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=4)
    out = tmp_path / "out"
    flags = ["--mode", "on-policy", "--prompt-tokens", str(PROMPT), "--max-new-tokens", str(NEW)]
    assert log_main(log_args(tiny_dir, corpus, out, *flags)) == 0
    ds, meta = fmt.load_logged(out)
    assert meta["mode"] == "on-policy"
    a = arrays(ds)
    text = list(open_corpus(str(corpus)).documents())[2]
    prompt = tiny_pair.tokenizer(text)["input_ids"][:PROMPT]
    [gen] = run(tiny_pair, make_rule("target"), [prompt], DecodeConfig(max_new_tokens=NEW, seed=0))
    rows = a["doc_id"] == 2
    # One row per generated token, predicted from the prompt and the tokens generated before it.
    np.testing.assert_array_equal(a["position"][rows], np.arange(PROMPT - 1, PROMPT - 1 + len(gen.tokens)))
    np.testing.assert_array_equal(a["token_id"][rows], np.array(gen.tokens))
    # Greedy target continuation: the target's argmax is always the logged token.
    sequence = torch.tensor([prompt + gen.tokens])
    v = tiny_pair.vocab_size
    with torch.no_grad():
        q = tiny_pair.drafter.model(sequence).logits[0, PROMPT - 1 : -1, :v]
        p = tiny_pair.target.model(sequence).logits[0, PROMPT - 1 : -1, :v]
    assert torch.equal(p.argmax(-1), torch.tensor(gen.tokens))
    assert (a["label_gap01"][rows] >= 0).all()  # the target is never wrong on its own greedy text
    expected = compute_features(q, p, q.argmax(-1)[:, None])[:, 0, :].numpy()
    np.testing.assert_allclose(a["features"][rows], expected, rtol=1e-4, atol=1e-5)


def test_cascade_generator_and_bad_generators(tiny_dir, tiny_pair, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=3)
    flags = ["--mode", "on-policy", "--prompt-tokens", "6", "--max-new-tokens", "8"]
    out = tmp_path / "chow"
    # chow defers iff max q < 1 - alpha: the tiny drafter's max q lies around 0.03, so alpha 0.97 keeps some drafts
    assert log_main(log_args(tiny_dir, corpus, out, *flags, "--generator", "chow", "--alpha", "0.97")) == 0
    a = arrays(fmt.load_logged(out)[0])
    # Each document's rows are the chow cascade's own greedy continuation of its first 6 tokens.
    cascade_wrote_other_text = False
    for doc, text in enumerate(open_corpus(str(corpus)).documents()):
        prompt = tiny_pair.tokenizer(text)["input_ids"][:6]
        cfg = DecodeConfig(max_new_tokens=8)
        [gen] = run(tiny_pair, make_rule("chow", 0.97), [prompt], cfg)
        [own] = run(tiny_pair, make_rule("target"), [prompt], cfg)
        rows = a["doc_id"] == doc
        np.testing.assert_array_equal(a["token_id"][rows], np.array(gen.tokens))
        np.testing.assert_array_equal(a["position"][rows], np.arange(5, 5 + len(gen.tokens)))
        cascade_wrote_other_text |= gen.tokens != own.tokens
    assert cascade_wrote_other_text  # the generator's text, not the target's
    with pytest.raises(DeferralError, match="unknown rule 'bogus'"):
        log_main(log_args(tiny_dir, corpus, tmp_path / "x", *flags, "--generator", "bogus"))
    with pytest.raises(DeferralError, match="drafter's own text"):
        log_main(log_args(tiny_dir, corpus, tmp_path / "y", *flags, "--generator", "drafter"))
