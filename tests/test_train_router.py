"""`deferral train fit` on the tiny pair: checkpoints, the MLflow store, registry alias, resume."""

from __future__ import annotations

import mlflow
import pytest

from deferral.cli import main as deferral
from tests.router_helpers import CONFIG, trained_tiny_router, tracking_uri, train_tiny


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    return trained_tiny_router(tiny_dir, tmp_path_factory.mktemp("train"))


def _runs(base):
    client = mlflow.MlflowClient(tracking_uri(base))
    exp = client.get_experiment_by_name("deferral-router")
    return client, client.search_runs([exp.experiment_id])


def test_checkpoints_and_export_under_default_root_dir(trained):
    base, _ = trained
    ckpts = base / "run" / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    assert (ckpts / "mlflow_run_id").read_text().strip()
    assert {p.name for p in (base / "run" / "export").iterdir()} >= {"router.safetensors", "router.json", "card.md"}


def best_checkpoint_test_auroc(base, log_dir) -> float:
    """AUROC (scikit-learn) of the best checkpoint's scores on the test split's deferral labels."""
    import torch
    from sklearn.metrics import roc_auc_score

    from training.router.datamodule import FeatureDataModule
    from training.router.export import read_checkpoint, router_from_checkpoint

    router = router_from_checkpoint(read_checkpoint(base / "run" / "checkpoints" / "best.ckpt"))
    data = FeatureDataModule(path=str(log_dir), target="gap_nll")  # the data the test router was trained on (tests/router_helpers.py)
    data.setup("test")
    features, labels = data.datasets["test"].tensors[:2]
    with torch.no_grad():
        scores = router.score(features).numpy()
    return float(roc_auc_score(labels.numpy() > 0.5, scores))


def test_mlflow_store_holds_run_metrics_artifacts_and_alias(trained):
    base, log_dir = trained
    client, runs = _runs(base)
    assert len(runs) == 1
    run = runs[0]
    for key in ("val/auroc", "val/ap", "val/ece", "val/brier", "test/auroc", "test/ap", "train/loss"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/auroc"] == pytest.approx(best_checkpoint_test_auroc(base, log_dir), abs=1e-4)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "router", "checkpoints", "plots"} <= top
    router_files = {a.path for a in client.list_artifacts(run.info.run_id, "router")}
    assert {"router/router.json", "router/router.safetensors", "router/card.md"} <= router_files
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc.png", "plots/pr.png", "plots/reliability.png"} <= plots
    version = client.get_model_version_by_alias("deferral-router", "champion")
    assert version.run_id == run.info.run_id
    assert run.data.params["target"] == "gap_nll"


def test_rerun_resumes_in_the_same_mlflow_run(trained):
    base, log_dir = trained
    run_id = (base / "run" / "checkpoints" / "mlflow_run_id").read_text().strip()
    assert train_tiny(log_dir, base / "run", base, epochs=3) == 0
    client, runs = _runs(base)
    assert [r.info.run_id for r in runs] == [run_id]
    epochs = [m.step for m in client.get_metric_history(run_id, "val/auroc")]
    assert epochs == [0, 1, 2]  # two epochs, then the resumed third; none repeated
    assert (base / "run" / "checkpoints" / "mlflow_run_id").read_text().strip() == run_id


def test_print_config_shows_resolved_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        deferral(["train", "fit", "--config", CONFIG, "--data.path", "somewhere", "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "path: somewhere" in out and "objective: regress" in out and "target: gap01" in out and "tracking_uri:" in out


def test_code_defaults_equal_the_shipped_config(capsys):
    """configs/router.yaml documents the defaults; training without it gives the same settings."""
    import yaml

    def resolved(*flags):
        with pytest.raises(SystemExit):
            deferral(["train", "fit", *flags, "--data.path", "x", "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    with_file, without = resolved("--config", CONFIG), resolved()
    for section in ("model", "data", "checkpoint", "early_stopping"):
        for key, value in with_file[section].items():
            if section == "data" and key == "path":
                continue
            assert without[section][key] == value, f"{section}.{key}: code {without[section][key]!r} vs YAML {value!r}"


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    rc = deferral(["train", "fit", "--config", CONFIG, "--data.path", str(tmp_path / "nope"),
                   "--trainer.default_root_dir", str(tmp_path / "run"),
                   "--mlflow.tracking_uri", tracking_uri(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "deferral log" in err


def test_tracking_none_trains_and_exports_without_a_store(trained, tmp_path):
    base, log_dir = trained
    root = tmp_path / "run"
    rc = deferral(
        ["train", "fit", "--config", CONFIG, "--data.path", str(log_dir), "--trainer.max_epochs", "1",
         "--trainer.default_root_dir", str(root), "--data.target", "gap_nll", "--tracking-uri", "none",  # the spelling of every command
         "--trainer.enable_progress_bar", "false"]
    )
    assert rc == 0
    assert {p.name for p in (root / "export").iterdir()} >= {"router.safetensors", "router.json", "card.md"}
    assert not (root / "checkpoints" / "mlflow_run_id").exists()
    assert list((root / "logs").rglob("metrics.csv"))  # metrics still land somewhere readable
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("mlruns"))


def test_training_output_is_this_project_s_only(trained, tmp_path, capfd):
    """No advertisements, hardware banners, MLflow INFO lines or library deprecations; the bar on
    stderr counting epochs 1..max_epochs; stdout empty."""
    base, log_dir = trained
    capfd.readouterr()
    rc = deferral(["train", "fit", "--config", CONFIG, "--data.path", str(log_dir), "--trainer.max_epochs", "2",
                   "--trainer.default_root_dir", str(tmp_path / "run"), "--mlflow.tracking_uri", tracking_uri(tmp_path)])
    assert rc == 0
    out, err = capfd.readouterr()
    assert out == ""
    for noise in ("Tip:", "GPU available", "TPU available", "LeafSpec", " INFO ", "Creating it", "Seed set"):
        assert noise not in err, noise
    assert "Epoch 2/2" in err and "Epoch 3" not in err and "Epoch 0" not in err
    assert err.rstrip().splitlines()[-1].startswith("best checkpoint")
