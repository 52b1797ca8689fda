"""Experiment tracking for distillation: MLflow when it is installed, plain files always.

Every run writes `metrics.csv` (Lightning's CSVLogger) and `summary.json` into its run folder. On a machine
without MLflow the run is complete without it; `deferral distill --log-run RUN_DIR` later copies those files
into an MLflow store (params, per-step metrics, final figures and the files as artifacts).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

from deferral.errors import DeferralError
from deferral.outputs import tracking_off


def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def make_loggers(run_dir: Path, tracking_uri: str | None, experiment: str, run_name: str) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="csv")]  # a new version_N per (resumed) fit
    if not tracking_off(tracking_uri) and mlflow_available():
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=tracking_uri))
    return loggers


def _flat_params(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def log_run(run_dir: str | Path, tracking_uri: str, experiment: str) -> str:
    """Log a finished run folder (summary.json, csv/version_*/metrics.csv) into MLflow; returns the run id."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise DeferralError(f"{run_dir} has no summary.json: point --log-run at a finished `deferral distill --out` folder")
    if not mlflow_available():
        raise DeferralError("mlflow is not installed here: pip install 'mlflow>=3,<4'")
    import mlflow

    summary = json.loads(summary_path.read_text())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=summary.get("run_name", run_dir.name)) as run:
        mlflow.log_params(_flat_params(summary.get("args", {})))
        finals = {k: float(v) for k, v in summary.get("final", {}).items() if isinstance(v, (int, float))}
        mlflow.log_metrics(finals)
        for metrics_csv in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
            with open(metrics_csv) as f:
                for row in csv.DictReader(f):
                    step = int(float(row.get("step") or 0))
                    values = {k.replace("/", "_"): float(v) for k, v in row.items()
                              if k not in ("step", "epoch") and v not in ("", None) and math.isfinite(float(v))}
                    if values:
                        mlflow.log_metrics(values, step=step)
            mlflow.log_artifact(str(metrics_csv), artifact_path=metrics_csv.parent.name)
        mlflow.log_artifact(str(summary_path))
        return run.info.run_id
