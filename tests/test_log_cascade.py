"""Cascade logging: rows from the decode loop's own blocks, with look-ahead and consequence labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import LOOKAHEAD_FEATURES, FeatureSpec, compute_features
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import run
from inference.tasks.text_metrics import chrf
from tests.test_log import arrays, log_args, write_corpus
from training.logs import logged_data as fmt
from training.logs.cascade_log import cut_prompt
from training.logs.mixed_corpus import chat_document
from training.logs.log_cli import main as log_main

PROMPT, NEW, K, HORIZON = 12, 14, 4, 6


@pytest.fixture(scope="module")
def cascade_log(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    corpus = write_corpus(root / "c.txt", docs=4)
    out = root / "out"
    flags = ["--mode", "cascade", "--generator", "speculative", "--prompt-tokens", str(PROMPT),
             "--max-new-tokens", str(NEW), "--draft-tokens", str(K), "--horizon", str(HORIZON)]
    assert log_main(log_args(tiny_dir, corpus, out, *flags)) == 0
    ds, meta = fmt.load_logged(out)
    return corpus, arrays(ds), meta


def _contexts(tiny_pair, corpus, a, rows):
    """Rebuild each row's context: the prompt plus the tokens before the drafted position, read back
    from the greedy target text (lossless speculative decoding writes exactly that)."""
    from training.logs.corpora import open_corpus

    docs = list(open_corpus(str(corpus)).documents())
    out = []
    for i in rows:
        prompt = cut_prompt(tiny_pair, int(a["doc_id"][i]), docs[int(a["doc_id"][i])], PROMPT, 0)
        out.append(prompt)
    return out


def test_rows_are_blocks_with_lookahead(cascade_log):
    _, a, meta = cascade_log
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    assert spec.lookahead and meta["mode"] == "cascade"
    ahead_n = a["features"][:, spec.names.index("ahead_n")]
    # a block of k drafts gives positions with k - 1, ..., 0 drafts after them, never more than K - 1
    assert set(np.unique(ahead_n)) <= set(range(K))
    assert (ahead_n == K - 1).sum() > 0 and (ahead_n == 0).sum() > 0
    # the logged "reference" is the target's own greedy token; the drafter's token is drafted_id
    agree = a["drafted_id"] == a["token_id"]
    np.testing.assert_array_equal(a["label_mismatch"] == 0, agree)


def test_consequence_labels_match_rollouts(cascade_log, tiny_pair):
    corpus, a, _ = cascade_log
    agree = a["drafted_id"] == a["token_id"]
    assert (a["label_ll_drop"][agree] == 0).all() and (a["label_rollout_chrf"][agree] == 1).all()
    assert (a["label_path_drop"][agree] == 0).all()
    assert (a["label_same_line"][agree] == 1).all()
    mismatches = np.flatnonzero(~agree)
    assert mismatches.size > 0
    # The first drafted position of each document's first block follows the prompt directly, so its
    # context is known here: recompute its labels with the plain target decode loop.
    first = [i for i in mismatches if a["position"][i] == a["position"][a["doc_id"] == a["doc_id"][i]].min()]
    assert first, "expected a mismatch right after some prompt"
    checked = 0
    for i, context in zip(first, _contexts(tiny_pair, corpus, a, first)):
        if len(context) != a["position"][i]:
            continue
        x, t = int(a["drafted_id"][i]), int(a["token_id"][i])
        cfg = DecodeConfig(max_new_tokens=HORIZON, draft_tokens=1, seed=0)
        [orig, swap] = run(tiny_pair, make_rule("target"), [context + [t], context + [x]], cfg)
        decode = tiny_pair.tokenizer.decode
        expected = chrf(decode([x] + swap.tokens), decode([t] + orig.tokens))
        assert a["label_rollout_chrf"][i] == pytest.approx(expected, abs=1e-5)
        # ll drop: the target believes its own continuation less after the drafter's token
        @torch.no_grad()
        def token_logps(prefix, continuation):
            ids = torch.tensor([prefix + continuation])
            logp = torch.log_softmax(tiny_pair.target.model(ids).logits[0, :, : tiny_pair.vocab_size], -1)
            n = len(prefix)
            return logp[n - 1 : -1].gather(-1, torch.tensor(continuation)[:, None])[:, 0].double()
        ll_drop = token_logps(context + [t], orig.tokens).mean() - token_logps(context + [x], orig.tokens).mean()
        assert a["label_ll_drop"][i] == pytest.approx(float(ll_drop), abs=1e-4)
        # path drop: the target's log-likelihood of its own path minus that of the drafted token's path
        path_drop = token_logps(context, [t] + orig.tokens).sum() - token_logps(context, [x] + swap.tokens).sum()
        assert a["label_path_drop"][i] == pytest.approx(float(path_drop), abs=1e-3)
        assert a["label_path_drop"][i] != 0
        checked += 1
    assert checked > 0


def test_features_equal_the_decode_loops(cascade_log, tiny_pair):
    """The first block of a document: features from a fresh pass over prompt + drafts equal the log's."""
    corpus, a, meta = cascade_log
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    doc = int(a["doc_id"][0])
    in_doc = np.flatnonzero(a["doc_id"] == doc)
    start = a["position"][in_doc].min()
    # rows are sorted stably by position, so the first row at each position is the first block's
    rows = np.array([in_doc[a["position"][in_doc] == start + j][0] for j in range(K)])
    [context] = _contexts(tiny_pair, corpus, a, rows[:1])
    drafts = [int(t) for t in a["drafted_id"][rows]]
    ids = torch.tensor([context + drafts])
    v = tiny_pair.vocab_size
    with torch.no_grad():
        q = tiny_pair.drafter.model(ids).logits[0, len(context) - 1 : -1, :v]
        p = tiny_pair.target.model(ids).logits[0, len(context) - 1 : -1, :v]
    from deferral.features import block_lookahead

    expected = compute_features(q, p, torch.tensor(drafts)[:, None], lookahead=block_lookahead(p[None], torch.tensor([drafts])))
    np.testing.assert_allclose(a["features"][rows], expected[:, 0].numpy(), rtol=1e-4, atol=1e-4)
    assert spec.names[-len(LOOKAHEAD_FEATURES):] == tuple(LOOKAHEAD_FEATURES)


def test_reference_gain_compares_both_rollouts_with_the_documents_next_lines(tiny_dir, tiny_pair, tmp_path):
    """Documents of several lines: the prompt is cut at a line, the next lines are the reference, and
    label_ref_gain = chrF(generated + drafted + roll-out, ref) - chrF(generated + target's + roll-out, ref)."""
    from training.logs.cascade_log import cut_document

    lines = ["alpha beta gamma", "delta epsilon", "zeta eta theta", "iota kappa", "lambda mu nu", "xi omicron pi"]
    corpus = tmp_path / "lines.jsonl"
    import json

    corpus.write_text("".join(json.dumps({"text": "\n".join(lines[i:] + lines[:i])}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    flags = ["--mode", "cascade", "--generator", "speculative", "--prompt-tokens", "40", "--max-new-tokens", "10",
             "--draft-tokens", str(K), "--horizon", "5"]
    assert log_main(log_args(tiny_dir, corpus, out, *flags)) == 0
    ds, _ = fmt.load_logged(out)
    a = arrays(ds)
    agree = a["drafted_id"] == a["token_id"]
    assert (a["label_ref_gain"][agree] == 0).all()
    gains = a["label_ref_gain"][~agree]
    assert np.isfinite(gains).all() and (gains != 0).any()
    # the first drafted position after a prompt: recompute from the two roll-outs
    i = next(i for i in np.flatnonzero(~agree) if a["position"][i] == a["position"][a["doc_id"] == a["doc_id"][i]].min())
    doc = int(a["doc_id"][i])
    text = json.loads(corpus.read_text().splitlines()[doc])["text"]
    prompt, reference = cut_document(tiny_pair, doc, text, 40, 0)
    assert reference.startswith("\n") and len(prompt) == a["position"][i]
    x, t = int(a["drafted_id"][i]), int(a["token_id"][i])
    cfg = DecodeConfig(max_new_tokens=5, draft_tokens=1, seed=0)
    [orig, swap] = run(tiny_pair, make_rule("target"), [prompt + [t], prompt + [x]], cfg)
    decode = tiny_pair.tokenizer.decode
    expected = chrf(decode([x] + swap.tokens), reference) - chrf(decode([t] + orig.tokens), reference)
    assert a["label_ref_gain"][i] == pytest.approx(expected, abs=1e-5)


def test_cascade_mode_refuses_generators_without_drafts(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=3)
    with pytest.raises(DeferralError, match="--mode cascade"):
        log_main(log_args(tiny_dir, corpus, tmp_path / "x", "--mode", "cascade", "--generator", "target"))


def test_chat_documents_go_through_the_template(tiny_pair):
    # the tiny tokenizer has no chat template: refused in one line, never logged as plain text
    with pytest.raises(DeferralError, match="no chat template"):
        cut_prompt(tiny_pair, 0, chat_document("hello"), 64, 0)
    assert cut_prompt(tiny_pair, 0, "a\nb\nc\nd", 64, 0)[-1] != tiny_pair.tokenizer.convert_tokens_to_ids("\n")


def test_calibration_counts_the_positions_decoding_examines():
    """A block is decided up to its first mismatch: later rows of the block are left out of the
    calibration table. Blocks are recovered from rows stored sorted by (doc, position), as logs are."""
    import numpy as np

    from training.logs.blocks import examined_positions

    rng = np.random.default_rng(0)
    k, docs, truth = 5, [], []
    for doc in range(6):  # simulate greedy lossless decoding: a block keeps its drafts up to a mismatch
        pos, n_blocks = 40 + doc, 0
        while n_blocks < 12:
            miss = rng.random(k) < 0.3
            first = int(np.argmax(miss)) if miss.any() else k
            for j in range(k):
                docs.append((doc, pos + j, int(miss[j])))
                truth.append(j <= first)
            pos += first + 1 if first < k else k + 1  # the correction (or the bonus) is committed too
            n_blocks += 1
    doc_id, position, mismatch = (np.array(c) for c in zip(*docs))
    stored = np.lexsort((position, doc_id))  # how a shard holds them
    got = examined_positions(doc_id[stored], position[stored], mismatch[stored], block=k)
    assert got.tolist() == np.array(truth)[stored].tolist()
    assert 0 < got.mean() < 1
    # rows that do not form blocks (a cut shard) count as examined
    assert examined_positions(np.array([1, 1]), np.array([3, 9]), np.array([1, 1]), block=k).all()


def test_replaying_a_decision_over_logged_blocks_counts_what_it_would_commit():
    """Each block commits its drafts up to the first mismatch the decision defers, plus that
    correction (or the bonus token when it keeps the whole block), counted here block by block."""
    import numpy as np

    from training.logs.blocks import replay_blocks

    rng = np.random.default_rng(1)
    k, rows, expected_tokens, expected_kept = 4, [], [], 0
    pos = 10
    for _ in range(30):
        miss, keep = rng.random(k) < 0.4, rng.random(k) < 0.5
        committed = 0
        for j in range(k):
            if miss[j] and not keep[j]:
                break
            committed += 1
            expected_kept += int(miss[j])
        expected_tokens.append(committed + 1)
        rows += [(0, pos + j, int(miss[j]), bool(keep[j])) for j in range(k)]
        lossless = int(np.argmax(miss)) if miss.any() else k
        pos += lossless + 1 if lossless < k else k + 1  # the log follows lossless decoding's text
    doc_id, position, mismatch, keep = (np.array(c) for c in zip(*rows))
    stored = np.lexsort((position, doc_id))
    replay = replay_blocks(doc_id[stored], position[stored], mismatch[stored], keep[stored], block=k)
    assert replay.tokens.tolist() == expected_tokens
    assert int(replay.kept_mismatch.sum()) == expected_kept
    nothing = replay_blocks(doc_id, position, mismatch, np.zeros(len(keep), bool), block=k)
    everything = replay_blocks(doc_id, position, mismatch, np.ones(len(keep), bool), block=k)
    assert nothing.kept_mismatch.sum() == 0 and everything.tokens_per_call == k + 1
