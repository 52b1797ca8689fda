"""MLflow helpers for router training: resolved config, plots, the export as an artifact, registry.

Everything goes through the MLFlowLogger's client and run id, so it lands in the run that Lightning
logs metrics to (also after a resume).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from lightning.pytorch.cli import SaveConfigCallback

RUN_ID_FILE = "mlflow_run_id"  # next to the checkpoints: a rerun continues this run


class MLflowSaveConfig(SaveConfigCallback):
    """Log the resolved LightningCLI config to the MLflow run as config.yaml.

    Lightning's own SaveConfigCallback writes into trainer.log_dir, which MLFlowLogger reports as
    None for sqlite/http stores (Lightning-AI/pytorch-lightning #19441): log through the client.
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        logger = trainer.logger
        if logger is None or not hasattr(logger, "run_id"):
            return
        text = self.parser.dump(self.config, skip_none=False)
        logger.experiment.log_text(logger.run_id, text, "config.yaml")


def log_params(logger, params: dict) -> None:
    """Flat params (strings, at most MLflow's 6000 characters each); existing keys are left alone."""
    run = logger.experiment.get_run(logger.run_id)
    for key, value in params.items():
        if key not in run.data.params:
            logger.experiment.log_param(logger.run_id, key, str(value)[:6000])


def log_metrics(logger, metrics: dict, prefix: str = "") -> None:
    for key, value in metrics.items():
        logger.experiment.log_metric(logger.run_id, f"{prefix}{key}", float(value))


def curve_figures(scores: np.ndarray, labels: np.ndarray, title: str):
    """ROC, precision-recall and reliability figures of held-out scores -> {file name: figure}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    figs = {}
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUROC {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    figs["roc.png"] = fig

    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision)
    ax.axhline(labels.mean(), color="k", ls=":", lw=0.8, label=f"base rate {labels.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR: {title}")
    ax.legend()
    figs["pr.png"] = fig

    if scores.min() >= 0 and scores.max() <= 1:
        frac, mean_pred = calibration_curve(labels, scores, n_bins=15, strategy="quantile")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(mean_pred, frac, "o-", ms=3)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="predicted probability", ylabel="observed frequency", title=f"reliability: {title}")
        figs["reliability.png"] = fig
    return figs


def log_figures(logger, figures: dict, folder: str = "plots") -> None:
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        logger.experiment.log_figure(logger.run_id, fig, f"{folder}/{name}")
        plt.close(fig)


def log_folder(logger, local: Path, artifact_path: str) -> None:
    logger.experiment.log_artifacts(logger.run_id, str(local), artifact_path)


def log_file(logger, local: Path, artifact_path: str) -> None:
    logger.experiment.log_artifact(logger.run_id, str(local), artifact_path)


def register_export(logger, artifact_path: str, name: str, alias: str) -> int:
    """Register the run's export folder as a new version of model `name` and point `alias` at it."""
    from mlflow.exceptions import MlflowException

    client = logger.experiment
    try:
        client.create_registered_model(name, description="deferral router exports (router.safetensors + router.json)")
    except MlflowException:
        pass  # already registered
    run = client.get_run(logger.run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=logger.run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def read_run_id(folder: Path) -> str | None:
    path = Path(folder) / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


def write_run_id(folder: Path, run_id: str) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(folder) / f".{RUN_ID_FILE}.tmp"
    tmp.write_text(run_id + "\n")
    os.replace(tmp, Path(folder) / RUN_ID_FILE)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="deferral-router-")
