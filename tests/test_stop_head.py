"""The drafting stop head: its features are the logged ones, it is fitted on a real `deferral log`
folder, and stopping on it changes a step's cost, never the greedy tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import DRAFTER_FEATURES, FeatureSpec, compute_features, drafter_statistics
from deferral.pair import load_pair
from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.runner import encode_prompts, run
from inference.stop_head import StopHead, load_stop_head
from tests.test_log import write_corpus
from tests.tiny_models import make_noisy_copy
from training.logs.log_cli import main as log_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fit_stop_head  # noqa: E402

TEXTS = ["def add(a, b):\n    return", "x", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def noisy_drafter(tiny_dir, tmp_path_factory):
    return make_noisy_copy(tiny_dir / "target", tmp_path_factory.mktemp("stop") / "noisy", noise=0.3, seed=0)


@pytest.fixture(scope="module")
def head_file(tiny_dir, noisy_drafter, tmp_path_factory):
    """A stop head fitted by the script on a log of the noisy pair (some drafts kept, some not)."""
    root = tmp_path_factory.mktemp("stoplog")
    corpus = write_corpus(root / "corpus.txt", docs=16)
    assert log_main(["--drafter", str(noisy_drafter), "--target", str(tiny_dir / "target"), "--data", str(corpus),
                     "--out", str(root / "log"), "--no-tracking", "--no-progress", "--max-len", "48"]) == 0
    assert fit_stop_head.main([str(root / "log"), "--out", str(root / "head.json")]) == 0
    return root / "head.json"


def test_drafter_statistics_are_the_logged_drafter_columns():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(7, 40, generator=g) * 3, torch.randn(7, 40, generator=g)
    logged = compute_features(q, p, q.argmax(-1, keepdim=True))[:, 0]  # (N, F)
    names = FeatureSpec().names
    torch.testing.assert_close(drafter_statistics(q), logged[:, [names.index(n) for n in DRAFTER_FEATURES]])


def test_the_fitted_head_ranks_drafts(head_file, capsys):
    head = load_stop_head(str(head_file))
    assert head.features == DRAFTER_FEATURES and len(head.weight) == len(DRAFTER_FEATURES)
    keep = head.keep_probability(torch.randn(5, 99))
    assert keep.shape == (5,) and bool(((keep > 0) & (keep < 1)).all())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stopping_on_the_head_keeps_the_greedy_tokens_and_shortens_blocks(tiny_dir, noisy_drafter, head_file,
                                                                          batch_size):
    pair = load_pair(str(noisy_drafter), str(tiny_dir / "target"))
    prompts = encode_prompts(pair, TEXTS)
    target = [g.tokens for g in run(pair, make_rule("target"), prompts, DecodeConfig(max_new_tokens=24))]
    drafted = {}
    for risk in (0.01, 0.99):
        cfg = DecodeConfig(max_new_tokens=24, draft_tokens=5, draft_stop=str(head_file), draft_stop_risk=risk)
        gens = run(pair, make_rule("speculative"), prompts, cfg, batch_size=batch_size)
        assert [g.tokens for g in gens] == target
        drafted[risk] = sum(g.stats.drafted for g in gens) / sum(g.stats.target_calls for g in gens)
    assert drafted[0.01] < drafted[0.99]  # a low risk level ends blocks early


def test_bad_stop_heads_and_risks_are_refused(tmp_path, head_file):
    with pytest.raises(DeferralError, match="does not exist"):
        load_stop_head(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DeferralError, match="not a stop-head JSON"):
        load_stop_head(str(tmp_path / "bad.json"))
    foreign = json.loads(head_file.read_text())
    foreign["features"] = ["q_top1"]
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    with pytest.raises(DeferralError, match="fit it again"):
        load_stop_head(str(tmp_path / "foreign.json"))
    with pytest.raises(DeferralError, match="--draft-stop-risk"):
        DecodeConfig(draft_stop_risk=1.0)
    head = StopHead(DRAFTER_FEATURES, (0.0,) * 6, (1.0,) * 6, (0.0,) * 6, 0.0)
    assert torch.allclose(head.keep_probability(torch.zeros(2, 10)), torch.full((2,), 0.5))
