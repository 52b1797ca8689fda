"""The router network, its export format and the calibration table (no training, no models)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from deferral.errors import DeferralError
from deferral.features import FeatureSpec
from deferral.router import Router, RouterConfig, load_router, save_router
from inference.learned import pair_mismatch, resolve_threshold
from deferral.calibration import build_table, deferral_rate, threshold_for_quality_loss, threshold_for_rate


@pytest.mark.parametrize("layers,residual", [(0, False), (2, False), (2, True)])
def test_router_shapes_and_normalisation(layers, residual):
    torch.manual_seed(0)
    router = Router(RouterConfig(num_features=7, hidden=16, layers=layers, residual=residual))
    x = torch.randn(5, 7) * 3 + 2
    router.set_normalisation(x.mean(0), x.std(0))
    out = router(x)
    assert out.shape == (5,)
    # Normalisation happens inside: shifting the stored mean with the input leaves outputs unchanged.
    shifted = Router(router.config)
    shifted.load_state_dict(router.state_dict())
    shifted.set_normalisation(router.mean + 1.0, router.std)
    assert torch.equal(shifted(x + 1.0), out) or torch.allclose(shifted(x + 1.0), out, atol=1e-6)
    # classify: the score is the probability of "defer", the sigmoid of the logit (higher = defer)
    torch.testing.assert_close(router.score(x), torch.sigmoid(out), rtol=0, atol=0)


def test_regress_score_is_raw_output():
    router = Router(RouterConfig(num_features=3, hidden=8, layers=1, objective="regress"))
    x = torch.randn(4, 3)
    assert torch.equal(router.score(x), router(x))


def test_bad_config_is_a_clear_error():
    with pytest.raises(DeferralError, match="objective"):
        RouterConfig(num_features=3, objective="rank")
    with pytest.raises(DeferralError, match="num_features"):
        RouterConfig(num_features=0)


def test_save_load_roundtrip_is_exact(tmp_path):
    torch.manual_seed(1)
    router = Router(RouterConfig(num_features=6, hidden=12, layers=2))
    router.set_normalisation(torch.arange(6.0), torch.full((6,), 2.0))
    save_router(tmp_path / "r", router, {"objective": "classify", "pair": {"vocab_size": 3}})
    loaded, meta = load_router(tmp_path / "r")
    x = torch.randn(9, 6)
    assert torch.equal(loaded.score(x), router.eval().score(x))
    assert meta["normalisation"]["mean"] == list(range(6))
    assert set(meta["library_versions"]) >= {"torch", "safetensors", "python"}
    assert (tmp_path / "r" / "router.safetensors").is_file()


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(DeferralError, match="does not exist"):
        load_router(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "router.json").write_text("{}")
    with pytest.raises(DeferralError, match="deferral export"):
        load_router(tmp_path / "half")
    router = Router(RouterConfig(num_features=2, hidden=4, layers=1))
    save_router(tmp_path / "new", router, {})
    meta = json.loads((tmp_path / "new" / "router.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "new" / "router.json").write_text(json.dumps(meta))
    with pytest.raises(DeferralError, match="re-export"):
        load_router(tmp_path / "new")


def test_calibration_reproduces_rates_on_its_own_data():
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    gap01 = rng.integers(-1, 2, 1000).astype(float)
    table = build_table(scores, gap01, rng.normal(size=1000))
    for rate in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        t = threshold_for_rate(table, rate)
        assert deferral_rate(scores, t) == pytest.approx(rate, abs=1e-3)
    # Deferring everything loses nothing; deferring nothing loses the mean gap.
    rows = table["rows"]
    assert rows[-1]["gap01_loss"] == 0.0
    assert rows[0]["gap01_loss"] == pytest.approx(gap01.mean())


def test_calibration_with_alpha_uses_tv():
    rng = np.random.default_rng(1)
    scores, tv = rng.random(500), rng.random(500)
    table = build_table(scores, np.zeros(500), np.zeros(500), tv=tv, alpha=0.5)
    t = threshold_for_rate(table, 0.3)
    assert deferral_rate(scores, t, tv=tv, alpha=0.5) == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(DeferralError, match="tv"):
        build_table(scores, np.zeros(500), np.zeros(500), alpha=0.5)


def test_quality_loss_lookup_picks_lowest_rate_within_budget():
    scores = np.linspace(0, 1, 100)
    gap01 = (scores > 0.8).astype(float)  # only the top-scored positions hurt when kept
    table = build_table(scores, gap01, gap01)
    threshold, rate = threshold_for_quality_loss(table, 0.0)
    assert rate == pytest.approx(0.2, abs=0.011)
    assert deferral_rate(scores, threshold) == pytest.approx(rate, abs=0.011)
    with pytest.raises(DeferralError, match="outside"):
        threshold_for_rate(table, 1.5)


def test_threshold_resolution():
    table = build_table(np.linspace(0, 1, 11), np.zeros(11), np.zeros(11))
    meta = {"calibration": table, "default_threshold": 0.42, "objective": "classify"}
    assert resolve_threshold(meta, 0.7, None, 0.0) == 0.7
    assert resolve_threshold(meta, None, None, 0.0) == 0.42
    assert resolve_threshold(meta, None, 0.5, 0.0) == pytest.approx(0.45)
    with pytest.raises(DeferralError, match="not both"):
        resolve_threshold(meta, 0.7, 0.5, 0.0)
    with pytest.raises(DeferralError, match="alpha"):
        resolve_threshold(meta, None, 0.5, 0.3)
    with pytest.raises(DeferralError, match="calibration"):
        resolve_threshold({}, None, 0.5, 0.0)


def test_pair_mismatch_names_what_differs():
    ident = {"vocab_size": 10, "target": {"tokenizer_sha256": "t", "config_sha256": "c", "sha256": "w"}}
    assert pair_mismatch(ident, json.loads(json.dumps(ident))) is None
    other_drafter = {**ident, "drafter": {"sha256": "zzz"}}
    assert pair_mismatch(ident, other_drafter) is None
    assert "vocabulary" in pair_mismatch(ident, {**ident, "vocab_size": 11})
    assert "tokenizer" in pair_mismatch(ident, {**ident, "target": {**ident["target"], "tokenizer_sha256": "x"}})
    assert "config" in pair_mismatch(ident, {**ident, "target": {**ident["target"], "config_sha256": "x"}})
    assert "weights" in pair_mismatch(ident, {**ident, "target": {**ident["target"], "sha256": "x"}})


def test_inference_and_export_loading_stay_light(tmp_path):
    router = Router(RouterConfig(num_features=FeatureSpec().dim, hidden=8, layers=1))
    save_router(tmp_path / "r", router, {"feature_spec": FeatureSpec().to_dict()})
    code = (
        "import sys, inference, inference.learned, inference.generate\n"
        "from deferral.router import load_router\n"
        f"load_router({str(tmp_path / 'r')!r})\n"
        "heavy = sorted(m for m in ('lightning', 'pytorch_lightning', 'mlflow', 'datasets') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tied_scores_get_the_nearest_rate_a_threshold_can_reach():
    # 100 positions: 10 at 0.9, 30 tied at 0.5, 60 at 0.1. No threshold defers exactly 20 or 30:
    # the tied block goes whole or not at all, whichever lands nearer the requested count.
    scores = np.array([0.9] * 10 + [0.5] * 30 + [0.1] * 60)
    gap01 = np.arange(100) % 2 * 1.0
    table = build_table(scores, gap01, gap01)
    rows = {round(r["deferral_rate"], 2): r for r in table["rows"]}
    assert deferral_rate(scores, rows[0.2]["threshold"]) == pytest.approx(0.1)  # 10 away from 20 vs 20
    assert deferral_rate(scores, rows[0.3]["threshold"]) == pytest.approx(0.4)  # 10 away from 30 vs 20
    assert deferral_rate(scores, rows[0.1]["threshold"]) == pytest.approx(0.1)  # exact between distinct scores
    # The quality loss is that of the positions the threshold really keeps.
    kept = scores <= rows[0.3]["threshold"]
    assert rows[0.3]["gap01_loss"] == pytest.approx(gap01[kept].sum() / 100)
