"""After `deferral train fit`: test the best checkpoint on held-out documents, export it, and (when
tracked) log the export, the checkpoint and the curves to the MLflow run and register the export."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from training import tracking


def finish_fit(trainer, model, datamodule, checkpoint_dir: Path, export_dir: Path, settings=None) -> Path:
    """Test, export (replacing `export_dir`) and track; `settings` is the run's MLflowSettings, or None
    without tracking. Returns the export folder."""
    from training.router.export import export_checkpoint

    best = trainer.checkpoint_callback.best_model_path or str(checkpoint_dir / "last.ckpt")
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    test_metrics = {k[len("test/") :]: float(v) for k, v in (results[0] if results else {}).items() if k.startswith("test/")}
    if export_dir.exists():
        shutil.rmtree(export_dir)
    folder = export_checkpoint(best, export_dir, test_metrics=test_metrics)
    summary = f"best checkpoint {best}; test AUROC {test_metrics.get('auroc', float('nan')):.4f}; exported to {folder}"
    if settings is None:
        print(f"{summary} (no MLflow tracking)", file=sys.stderr)
        return folder
    logger = trainer.logger
    tracking.log_folder(logger, folder, "router")
    with tracking.scratch_dir() as tmp:
        named = Path(tmp) / "best.ckpt"
        shutil.copyfile(best, named)
        tracking.log_file(logger, named, "checkpoints")
    out = model.outputs.get("test")
    if out is not None and len(out["y"]) and 0 < out["y"].mean() < 1:
        tracking.log_figures(logger, tracking.curve_figures(out["score"], out["y"], datamodule.target))
    version = None
    if settings.registered_model:
        version = tracking.register_export(logger, "router", settings.registered_model, settings.alias)
    where = f"; registered {settings.registered_model} v{version} @{settings.alias}" if version else ""
    print(f"{summary}; MLflow run {logger.run_id} at {settings.tracking_uri}{where}", file=sys.stderr)
    return folder
