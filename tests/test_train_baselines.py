"""Baselines: the paper's rules read off the feature vector, logistic regression, the comparison table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deferral.cli import main as deferral
from deferral.features import FeatureSpec, compute_features
from training.router.baselines import greedy_gain_table, markdown_table, rule_scores, score_table
from tests.router_helpers import write_synthetic_log


def test_rule_scores_match_the_paper_formulas():
    g = torch.Generator().manual_seed(0)
    q_logits, p_logits = torch.randn(50, 30, generator=g) * 2, torch.randn(50, 30, generator=g) * 2
    drafted = q_logits.argmax(-1)
    feats = compute_features(q_logits, p_logits, drafted[:, None])[:, 0, :].numpy()
    q, p = torch.softmax(q_logits, -1).double(), torch.softmax(p_logits, -1).double()
    tv = (q - p).clamp_min(0).sum(-1)
    gain = p.max(-1).values - q.max(-1).values
    scores = rule_scores(feats, list(FeatureSpec().names), alpha=0.7)
    np.testing.assert_allclose(scores["chow"], 1 - q.max(-1).values, atol=1e-6)
    np.testing.assert_allclose(scores["diff"], gain, atol=1e-6)
    np.testing.assert_allclose(scores["opt"], gain - 0.7 * tv, atol=1e-6)
    np.testing.assert_allclose(scores["token-v3"], 1 - p.gather(-1, drafted[:, None])[:, 0] / p.max(-1).values, atol=1e-5)


def test_score_table_and_markdown():
    labels = np.array([0, 0, 1, 1])
    res = score_table({"perfect": np.array([0.1, 0.2, 0.8, 0.9]), "reversed": np.array([4, 3, 2, 1])}, labels)
    assert res["perfect"] == {"auroc": 1.0, "ap": 1.0} and res["reversed"]["auroc"] == 0.0
    assert np.isnan(score_table({"x": np.ones(3)}, np.ones(3))["x"]["auroc"])
    table = markdown_table({"gap01": {"router": res["perfect"], **res}}, {"gap01": 0.5})
    lines = table.splitlines()
    assert lines[0] == "| method | gap01 AUROC | gap01 AP |" and lines[2].startswith("| router | 1.0000")


def test_greedy_gain_counts_only_disagreements_and_the_oracle_bounds_it():
    gap01 = np.array([1.0, -1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    disagree = np.array([True, True, True, True, False, False, False, False, False, False])
    # "wrong" ranks the drafter-right position first; position 5 (agreeing argmaxes) never counts.
    scores = {"right": np.array([4.0, 1, 2, 3, 9, 9, 0, 0, 0, 0]), "wrong": np.array([1.0, 4, 2, 3, 9, 9, 0, 0, 0, 0])}
    gains = greedy_gain_table(scores, gap01, disagree, budgets=(0.25, 0.5, 1.0))
    assert gains["right"] == [100.0, 200.0, 100.0]  # top-1 of 4: +1; top-2: +2; all four: 1 - 1 + 0 + 1
    assert gains["wrong"] == [-100.0, 0.0, 100.0]
    assert gains["oracle"] == [100.0, 200.0, 100.0]
    # The oracle bounds every score at every budget (above, the values are literal; here random scores).
    rng = np.random.default_rng(0)
    gap01 = rng.choice([-1.0, 0.0, 1.0], size=400)
    disagree = rng.random(400) < 0.5
    random_scores = {f"s{i}": rng.normal(size=400) for i in range(20)}
    gains = greedy_gain_table({**random_scores, "labels": gap01.copy()}, gap01, disagree, budgets=(0.1, 0.3, 0.6, 1.0))
    for name, values in gains.items():
        assert all(v <= o + 1e-9 for v, o in zip(values, gains["oracle"])), name
    assert gains["labels"] == gains["oracle"]  # a score equal to the labels reaches the ceiling
    assert any(v < o for name in random_scores for v, o in zip(gains[name], gains["oracle"]))


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_baselines_cli_on_a_logged_dataset(tmp_path, capsys, method):
    log = write_synthetic_log(tmp_path / "log")
    out = tmp_path / "table.md"
    rc = deferral(["baselines", "--data", str(log), "--targets", "gap_nll,reject", "--calibration", method,
                   "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    for name in ("logistic regression", "chow", "diff", "opt", "opt-ratio", "token-v3"):
        assert f"| {name}" in text
    record = json.loads(out.with_suffix(".json").read_text())
    lr = record["results"]["reject"][f"logistic regression ({method})"]["auroc"]
    assert lr > 0.9  # "reject" is a function of accept_prob_tok, one of the features
    assert 0 < record["positive_rate"]["gap_nll"] < 1
    assert "Greedy-cascade gain" in text and set(record["greedy_gain"]) >= {"token-v3", "oracle"}


def test_bad_target_is_one_line(tmp_path, capsys):
    log = write_synthetic_log(tmp_path / "log", docs=5, per_doc=20)
    assert deferral(["baselines", "--data", str(log), "--targets", "nonsense"]) == 2
    assert "unknown router target" in capsys.readouterr().err


def test_whole_log_scores_every_document_without_logistic_regression(tmp_path, capsys):
    log = write_synthetic_log(tmp_path / "log", docs=6, per_doc=50)
    assert deferral(["baselines", "--data", str(log), "--targets", "gap01", "--whole-log"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Every document of {log} (300 positions")
    assert "logistic regression" not in out and "| token-v3 |" in out and "| oracle |" in out


def test_baseline_scores_decide_as_the_rules_do():
    """A rule defers exactly where its baseline score exceeds α (OPT: where its margin is positive),
    on the same positions: the baselines rank positions by the rules' own formulas."""
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.speculative import rule_inputs

    g = torch.Generator().manual_seed(1)
    q_logits, p_logits = torch.randn(200, 30, generator=g) * 2, torch.randn(200, 30, generator=g) * 2
    drafted = q_logits.argmax(-1)
    d = rule_inputs(q_logits, p_logits, drafted, DecodeConfig(temperature=1.0))
    feats = compute_features(q_logits, p_logits, drafted[:, None])[:, 0, :].numpy()
    for alpha in (0.1, 0.3, 0.6):
        scores = rule_scores(feats, list(FeatureSpec().names), alpha=alpha)
        for name in ("chow", "diff", "token-v3"):
            deferred = make_rule(name, alpha).target(d).deferred.numpy()
            close = np.abs(scores[name] - alpha) < 1e-5  # float32 features vs the rule's own arithmetic
            assert (deferred == (scores[name] > alpha))[~close].all(), (name, alpha)
            assert 0 < deferred.mean() < 1, (name, alpha)
        deferred = make_rule("opt", alpha).target(d).deferred.numpy()
        close = np.abs(scores["opt"]) < 1e-5
        assert (deferred == (scores["opt"] > 0))[~close].all(), alpha
