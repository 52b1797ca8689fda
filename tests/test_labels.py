"""Labels on hand-built logits, where every value can be worked out by hand."""

import math

import torch

from deferral.labels import TOKEN_LABELS
from tests.labels_helper import token_labels as compute_labels


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_labels_by_hand():
    # Vocabulary of 3. Row 0: q and p agree on token 0; row 1: they disagree.
    q = _logits([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    p = _logits([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    reference = torch.tensor([1, 1])
    drafted = torch.tensor([0, 0])
    out = compute_labels(q, p, reference, drafted)
    assert set(out) == set(TOKEN_LABELS)
    assert out["label_mismatch"].tolist() == [0, 1]
    assert out["label_mismatch"].dtype == torch.int8
    # min(1, p(x)/q(x)) with x = 0
    torch.testing.assert_close(out["label_accept_prob"], torch.tensor([1.0, 0.2 / 0.6]))
    # 1[argmax q != y] - 1[argmax p != y], y = 1: row 0 both wrong -> 0; row 1 q wrong, p right -> 1
    assert out["label_gap01"].tolist() == [0.0, 1.0]
    # -log q(y) + log p(y)
    torch.testing.assert_close(
        out["label_gap_nll"], torch.tensor([math.log(0.2 / 0.3), math.log(0.7 / 0.3)])
    )
    # TV = sum max(0, q - p)
    torch.testing.assert_close(out["tv"], torch.tensor([0.1 + 0.1, 0.4]))


def test_gap01_negative_when_only_drafter_right():
    q = _logits([[0.1, 0.8, 0.1]])
    p = _logits([[0.8, 0.1, 0.1]])
    out = compute_labels(q, p, torch.tensor([1]), torch.tensor([1]))
    assert out["label_gap01"].item() == -1.0
    torch.testing.assert_close(out["label_accept_prob"], torch.tensor([0.1 / 0.8]))


def test_oracle_deferral_from_gap_and_tv():
    """gap > alpha * tv is computable at training time for any alpha from the logged columns: the
    columns equal an independent float64 numpy computation (TV as half the L1 distance), so the oracle
    read off them defers exactly where the numpy oracle does."""
    import numpy as np

    torch.manual_seed(0)
    n, v = 96, 20
    q, p = 2 * torch.randn(n, v), 2 * torch.randn(n, v)
    # references the target, the drafter or neither predicts: gap01 takes the values -1, 0 and 1
    y = torch.where(torch.arange(n) % 3 == 0, p.argmax(-1), torch.where(torch.arange(n) % 3 == 1, q.argmax(-1),
                                                                        torch.randint(0, v, (n,))))
    out = compute_labels(q, p, y, q.argmax(-1))
    qn, pn = (x / x.sum(-1, keepdims=True) for x in (np.exp(q.double().numpy()), np.exp(p.double().numpy())))
    yn = y.numpy()
    tv = 0.5 * np.abs(qn - pn).sum(-1)
    gap01 = (qn.argmax(-1) != yn).astype(float) - (pn.argmax(-1) != yn).astype(float)
    gap_nll = np.log(pn[np.arange(n), yn]) - np.log(qn[np.arange(n), yn])
    np.testing.assert_allclose(out["tv"].numpy(), tv, atol=1e-6)
    np.testing.assert_array_equal(out["label_gap01"].numpy(), gap01)
    np.testing.assert_allclose(out["label_gap_nll"].numpy(), gap_nll, atol=1e-5)
    assert set(gap01.tolist()) == {-1.0, 0.0, 1.0}
    for alpha in (0.0, 0.5, 1.5):
        oracle = gap01 > alpha * tv
        np.testing.assert_array_equal((out["label_gap01"] > alpha * out["tv"]).numpy(), oracle, err_msg=str(alpha))
        assert 0 < oracle.sum() < n, alpha  # the oracle neither defers everywhere nor nowhere


def test_labels_with_features_equal_compute_labels():
    from deferral.features import FeatureSpec, compute_features
    from deferral.labels import labels_with_features

    torch.manual_seed(1)
    q, p = 3 * torch.randn(200, 50), 3 * torch.randn(200, 50)
    y = torch.randint(0, 50, (200,))
    drafted = q.argmax(-1)
    features = compute_features(q, p, drafted[:, None])[:, 0, :]
    fast = labels_with_features(features, FeatureSpec().names, q, p, y, drafted)
    slow = compute_labels(q, p, y, drafted)
    assert set(fast) == set(slow)
    for name in slow:
        assert fast[name].dtype == slow[name].dtype, name
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-6, msg=name)


def test_router_targets_orient_and_threshold_their_registered_column(monkeypatch):
    """Each named target reads its column from the registry, orients it (higher = keeping the draft
    is worse) and thresholds it; a target added to the registry works everywhere with no other edit."""
    import numpy as np
    import pytest

    from deferral.errors import DeferralError
    from deferral.labels import LABEL_COLUMNS, ROUTER_TARGETS, RouterTarget
    from training.router.datamodule import LoggedArrays, binary_target, check_target, regression_target

    cols = {
        "label_gap01": np.array([1.0, 0.0, -1.0, 0.0], np.float32),
        "label_accept_prob": np.array([0.2, 0.9, 0.5, 0.49], np.float32),
        "label_rollout_chrf": np.array([0.3, 1.0, 0.6, 0.4], np.float32),
        "label_ref_gain": np.array([-0.1, 0.0, 0.2, -0.05], np.float32),
        "label_mismatch": np.array([1, 0, 1, 1], np.int8),
    }
    arrays = LoggedArrays(features=np.zeros((4, 1), np.float32), columns=cols, meta={})
    assert binary_target(arrays, "gap01").tolist() == [1, 0, 0, 0]
    assert binary_target(arrays, "reject").tolist() == [1, 0, 0, 1]
    assert binary_target(arrays, "harm").tolist() == [1, 0, 0, 1]  # 1 - chrF > 0.5
    np.testing.assert_allclose(regression_target(arrays, "harm"), [0.7, 0.0, 0.4, 0.6], atol=1e-6)
    assert binary_target(arrays, "ref_harm").tolist() == [1, 0, 0, 1]  # a loss against the reference
    with pytest.raises(DeferralError, match="objective 'regress' needs"):
        regression_target(arrays, "mismatch")
    assert all(t.column in LABEL_COLUMNS for t in ROUTER_TARGETS.values())

    monkeypatch.setitem(ROUTER_TARGETS, "unsure", RouterTarget("unsure", "label_accept_prob", "acceptance below 0.95",
                                                               needed=lambda h: h < 0.95))
    check_target("unsure")
    assert binary_target(arrays, "unsure").tolist() == [1, 1, 1, 1]
