"""`deferral export` from a checkpoint and from an MLflow run; what the export folder records."""

from __future__ import annotations

import json

import pytest
import torch

from deferral.cli import main as deferral
from deferral.router import load_router
from tests.router_helpers import trained_tiny_router, tracking_uri
from training.logs.logged_data import read_meta


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    return trained_tiny_router(tiny_dir, tmp_path_factory.mktemp("export"))


def test_export_from_checkpoint_records_what_it_was_trained_on(trained, tmp_path):
    base, log_dir = trained
    ckpt = base / "run" / "checkpoints" / "best.ckpt"
    assert deferral(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "r")]) == 0
    router, meta = load_router(tmp_path / "r")
    logged = read_meta(log_dir)
    assert meta["pair"] == logged["pair"]
    assert meta["feature_spec"] == logged["feature_spec"]
    assert meta["label"]["target"] == "gap_nll" and meta["objective"] == "classify"
    assert len(meta["calibration"]["rows"]) == 101 and meta["calibration"]["split"] == "val"
    assert len(meta["normalisation"]["mean"]) == meta["config"]["num_features"] == router.config.num_features
    assert meta["library_versions"]["lightning"] and meta["library_versions"]["torch"]
    assert set(meta["data"]["splits"]) == {"train", "val", "test"}
    card = (tmp_path / "r" / "card.md").read_text()
    assert "Trained on" in card and "--rule learned" in card and "auroc" in card
    assert f"Default threshold: {meta['default_threshold']:.4f} (deferral rate {meta['default_deferral_rate']} of" in card


def test_the_card_says_where_the_default_threshold_comes_from():
    from training.router.export import default_origin

    table = {"rows": [{"deferral_rate": 0.1, "threshold": 2.0}, {"deferral_rate": 0.2, "threshold": 0.5}]}
    meta = {"objective": "regress", "calibration": table, "default_deferral_rate": 0.2}
    assert "deferral rate 0.2 of the calibration table" in default_origin({**meta, "default_threshold": 0.5})
    assert "neutral threshold" in default_origin({**meta, "calibration": None, "default_threshold": 0.0})
    assert "neutral threshold" in default_origin({**meta, "objective": "classify", "calibration": None,
                                                  "default_threshold": 0.5})
    assert "set by hand" in default_origin({**meta, "default_threshold": 0.9})


def test_exported_router_scores_like_the_trained_module(trained, tmp_path):
    """The export scores as the training module of its checkpoint does (that module rebuilt by its own
    constructor from the checkpoint's hyper-parameters) and normalises with the training split's
    feature statistics."""
    from training.router.datamodule import FeatureDataModule
    from training.router.module import RouterModule

    base, log_dir = trained
    ckpt = base / "run" / "checkpoints" / "best.ckpt"
    assert deferral(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "r")]) == 0
    loaded, _ = load_router(tmp_path / "r")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module = RouterModule(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
    module.load_state_dict(state["state_dict"])
    module.eval()
    x = torch.randn(64, loaded.config.num_features) * 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(x), module.net.score(x), rtol=0, atol=0)
    data = FeatureDataModule(path=str(log_dir), target="gap_nll")  # the data the test router was trained on (tests/router_helpers.py)
    data.setup("fit")
    torch.testing.assert_close(loaded.mean, data.mean)
    torch.testing.assert_close(loaded.std, data.std)


def test_export_from_mlflow_run_carries_test_metrics(trained, tmp_path):
    base, _ = trained
    run_id = (base / "run" / "checkpoints" / "mlflow_run_id").read_text().strip()
    rc = deferral(["export", "--mlflow-run", run_id, "--tracking-uri", tracking_uri(base), "--out", str(tmp_path / "m")])
    assert rc == 0
    meta = json.loads((tmp_path / "m" / "router.json").read_text())
    import mlflow

    run = mlflow.MlflowClient(tracking_uri(base)).get_run(run_id)
    tracked = {k[len("test/"):]: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    assert {"auroc", "ap"} <= set(tracked) and meta["metrics"]["test"] == tracked  # the run's own test metrics


def test_export_errors_are_one_line(trained, tmp_path, capsys):
    base, _ = trained
    assert deferral(["export", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert deferral(["export", "--out", str(tmp_path / "x")]) == 2
    assert deferral(["export", "--mlflow-run", "0" * 32, "--tracking-uri", tracking_uri(base), "--out", str(tmp_path / "x")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3
