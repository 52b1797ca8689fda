"""The learned rule from an export: generate end to end, refusal of other pairs, calibration."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from deferral.cli import main as deferral
from deferral.errors import DeferralError
from deferral.router import load_router
from inference.learned import load_learned_rule
from tests.router_helpers import export_tiny_router
from deferral.calibration import deferral_rate, threshold_for_rate
from training.router.datamodule import FeatureDataModule


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    return export_tiny_router(tiny_dir, tmp_path_factory.mktemp("learned"), docs=40, words=60, epochs=2)


def test_generate_with_learned_rule_end_to_end(exported, tiny_dir, capsys):
    router, _ = exported

    def generate(*flags: str) -> dict:
        rc = deferral(["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                       "--prompt", "def f(x):", "--max-new-tokens", "12", "--json", *flags])
        assert rc == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    learned = ("--rule", "learned", "--router", str(router))
    row = generate(*learned, "--deferral-rate", "0.3")
    assert row["rule"] == "learned" and 1 <= row["new_tokens"] <= 12
    assert row["target_calls"] >= 1 and row["drafted"] >= row["accepted"]
    # The trained router at its two ends. Deferring at every position makes pi = p: lossless speculative
    # decoding, the target's greedy tokens. Deferring nowhere keeps every draft: the drafter's tokens.
    target, drafter = generate("--rule", "target"), generate("--rule", "drafter")
    assert target["tokens"] != drafter["tokens"]  # the two ends are told apart
    always = generate(*learned, "--threshold=-1e9")
    assert always["tokens"] == target["tokens"] and always["deferred"] == always["examined"] > 0
    never = generate(*learned, "--threshold=1e9")
    assert never["tokens"] == drafter["tokens"]
    assert never["deferred"] == 0 and never["accepted"] == never["drafted"] > 0


def test_router_for_one_pair_is_refused_by_another(exported, tiny_dir, capsys):
    router, _ = exported
    rc = deferral(["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target_padded"),
                   "--rule", "learned", "--router", str(router), "--prompt", "x", "--max-new-tokens", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "another pair" in err[0]


def test_feature_version_mismatch_is_refused(exported, tiny_pair, tmp_path):
    router, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(router, stale)
    meta = json.loads((stale / "router.json").read_text())
    meta["feature_spec"]["version"] = 0
    (stale / "router.json").write_text(json.dumps(meta))
    with pytest.raises(DeferralError, match="re-log"):
        load_learned_rule(str(stale), tiny_pair)


def test_threshold_choices(exported, tiny_pair):
    router, _ = exported
    meta = json.loads((router / "router.json").read_text())
    assert load_learned_rule(str(router), tiny_pair, threshold=0.25).threshold == 0.25
    rule = load_learned_rule(str(router), tiny_pair, deferral_rate=0.3)
    assert rule.threshold == pytest.approx(threshold_for_rate(meta["calibration"], 0.3))
    assert load_learned_rule(str(router), tiny_pair).threshold == pytest.approx(meta["default_threshold"])
    assert rule.candidates == 1 and rule.alpha == 0.0


def test_requested_deferral_rate_holds_on_held_out_documents(exported):
    """Thresholds calibrated on the validation documents give about the requested rate on the
    test documents (different documents, same corpus)."""
    router_dir, log_dir = exported
    router, meta = load_router(router_dir)
    dm = FeatureDataModule(path=str(log_dir), target="gap_nll", val_fraction=0.25, test_fraction=0.25)
    dm.setup("test")
    features = dm.datasets["test"].tensors[0]
    assert len(features) > 1500
    with torch.inference_mode():
        scores = router.score(features).numpy()
    for rate in (0.2, 0.3, 0.5):
        got = deferral_rate(scores, threshold_for_rate(meta["calibration"], rate))
        # binomial sd at n ~ 2000 is ~0.01; documents differ, so allow a wider band
        assert abs(got - rate) < 0.1, (rate, got)
    assert np.isfinite(scores).all()
