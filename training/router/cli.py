"""`deferral train`: LightningCLI over RouterModule + FeatureDataModule, tracked in MLflow.

    deferral train fit --config configs/router.yaml [--data.path DIR] [--trainer.max_epochs N]
                       [--trainer.default_root_dir DIR] [--print_config]

Checkpoints go to <default_root_dir>/checkpoints (best.ckpt, last.ckpt rewritten after every epoch,
both written aside and renamed) next to the MLflow run id and fingerprint.json (what they are
trained on); rerunning the same command resumes from last.ckpt in the same MLflow run, and a rerun
with other data, target or model settings is refused. After fitting, the best
checkpoint is tested on held-out documents, exported to <default_root_dir>/export, logged to the
run (router folder, checkpoint, ROC/PR/reliability plots) and registered in the model registry
under `mlflow.registered_model`@`mlflow.alias`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import EarlyStopping, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from lightning.pytorch.plugins.io import CheckpointIO

from deferral.outputs import DEFAULT_TRACKING_URI, tracking_off
from training import tracking
from training.quiet import EpochProgressBar, quiet_third_party
from training.router.checkpoints import (
    AtomicCheckpointIO,
    EpochCheckpoint,
    check_resume,
    data_identity,
    fingerprint,
    read_checkpoint,
    write_fingerprint,
)
from training.router.datamodule import FeatureDataModule
from training.router.module import RouterModule


@dataclass
class MLflowSettings:
    """Where and how the run is tracked.

    tracking_uri: MLflow store (sqlite:///mlflow.db = a file in the working directory; see `mlflow ui`),
        or "none" to train without MLflow (metrics go to CSV files under default_root_dir/logs).
    experiment_name: experiment the run goes into.
    run_name: optional display name of the run.
    artifact_location: artifact root of a newly created experiment (None = MLflow's default, ./mlruns).
    registered_model: registry name the exported router is registered under (None = do not register).
    alias: registry alias pointed at the new version.
    """

    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment_name: str = "deferral-router"
    run_name: str | None = None
    artifact_location: str | None = None
    registered_model: str | None = "deferral-router"
    alias: str = "champion"


class RouterCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(MLflowSettings, "mlflow")
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",  # the objective's own loss on held-out documents
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": "val/loss", "early_stopping.mode": "min", "early_stopping.patience": 2,
             "early_stopping.min_delta": 0.0005}
        )
        parser.link_arguments("data.num_features", "model.num_features", apply_on="instantiate")
        parser.link_arguments("data.target", "model.target", apply_on="parse")

    # --- resume bookkeeping ---------------------------------------------------------------
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        check_settings(cfg)
        root = Path(cfg.trainer.default_root_dir or ".")
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = str(root / "checkpoints")
        self.checkpoint_dir = Path(cfg.checkpoint.dirpath)
        self.export_dir = root / "export"
        self.resume_run_id = None
        last = self.checkpoint_dir / "last.ckpt"
        self.fingerprint = None
        if self.subcommand != "fit":
            return
        self.fingerprint = fingerprint(_as_dict(cfg.data), _as_dict(cfg.model), data_identity(cfg.data.path))
        if cfg.get("ckpt_path") is None and last.is_file():
            # a cut file or another run's checkpoints fail here in one line, before any training
            check_resume(self.checkpoint_dir, read_checkpoint(last), self.fingerprint)
            cfg.ckpt_path = str(last)
            self.resume_run_id = tracking.read_run_id(self.checkpoint_dir)
            print(f"resuming from {last} (MLflow run {self.resume_run_id})", file=sys.stderr)
        elif cfg.get("ckpt_path") and cfg.ckpt_path not in ("last", "best", "hpc", "registry"):
            read_checkpoint(cfg.ckpt_path)

    @property
    def tracked(self) -> bool:
        """False when `--mlflow.tracking_uri none`: train, test and export without an MLflow store."""
        s: MLflowSettings = self._get(self.config_init, "mlflow")
        return not tracking_off(s.tracking_uri)

    def instantiate_trainer(self, **kwargs):
        # checkpoints are written aside and renamed: a kill never leaves a cut last.ckpt
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        callbacks = list(kwargs.get("callbacks") or [])
        bar_on = self._get(self.config_init, "trainer", default={}).get("enable_progress_bar") is not False
        if bar_on and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, EpochProgressBar()]
        s: MLflowSettings = self._get(self.config_init, "mlflow")
        if not self.tracked:
            kwargs["logger"] = CSVLogger(save_dir=str(self.checkpoint_dir.parent), name="logs")
            return super().instantiate_trainer(**kwargs)
        kwargs["logger"] = MLFlowLogger(
            experiment_name=s.experiment_name,
            run_name=s.run_name,
            tracking_uri=s.tracking_uri,
            artifact_location=s.artifact_location,
            run_id=self.resume_run_id,
            tags={"deferral.component": "router"},
        )
        return super().instantiate_trainer(**kwargs)

    # --- fit hooks ---------------------------------------------------------------------------
    def before_fit(self) -> None:
        if self.fingerprint is not None:  # what the checkpoints below are trained on (checked on resume)
            write_fingerprint(self.checkpoint_dir, self.fingerprint)
        if not self.tracked:
            return
        logger = self.trainer.logger
        tracking.write_run_id(self.checkpoint_dir, logger.run_id)
        self.datamodule.setup("fit")
        desc = self.datamodule.description()
        tracking.log_params(
            logger,
            {
                "data.positions": sum(v["positions"] for v in desc["splits"].values()),
                "data.splits": desc["splits"],
                "data.corpus": desc["corpus"],
                "data.mode": desc["mode"],
                "pair.target": self.datamodule.meta["pair"]["target"].get("source"),
                "pair.drafter": self.datamodule.meta["pair"]["drafter"].get("source"),
            },
        )

    def after_fit(self) -> None:
        from training.router.finish import finish_fit

        settings: MLflowSettings = self._get(self.config_init, "mlflow")
        finish_fit(self.trainer, self.model, self.datamodule, self.checkpoint_dir, self.export_dir,
                   settings if self.tracked else None)


def _as_dict(namespace) -> dict:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace or {})


def main(argv: list[str]) -> int:
    # argv comes from the `deferral` entry point, not sys.argv; the checkpoint folder holds the run id.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    quiet_third_party()
    RouterCLI(
        RouterModule,
        FeatureDataModule,
        args=tracking_alias(argv),
        seed_everything_default=1234,
        save_config_callback=tracking.MLflowSaveConfig,
        save_config_kwargs={"save_to_log_dir": False, "overwrite": True},
        parser_kwargs={"prog": "deferral train"},
    )
    return 0


def tracking_alias(argv: list[str]) -> list[str]:
    """`--tracking-uri X` (the spelling of every other command), wherever it stands, as LightningCLI's
    `--mlflow.tracking_uri X` at the end (after the subcommand, where LightningCLI reads it)."""
    rest, uris, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--tracking-uri" and i + 1 < len(argv):
            uris.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("--tracking-uri="):
            uris.append(argv[i].split("=", 1)[1])
        else:
            rest.append(argv[i])
        i += 1
    # last, so that it overrides a --config file's value as a flag given after it would
    return rest + ["--mlflow.tracking_uri", uris[-1]] if uris else rest


def check_settings(cfg) -> None:
    """Settings that would fail only after the data is loaded (or leave no checkpoint), refused up front."""
    from deferral.errors import DeferralError
    from deferral.outputs import check_output_folder, check_tracking_store

    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and (epochs == 0 or epochs < -1):
        raise DeferralError(f"--trainer.max_epochs {epochs}: train at least 1 epoch (or -1: until early stopping)")
    check_output_folder(cfg.trainer.default_root_dir or ".", "--trainer.default_root_dir")
    if cfg.checkpoint.dirpath is not None:
        check_output_folder(cfg.checkpoint.dirpath, "--checkpoint.dirpath")
    if not tracking_off(cfg.mlflow.tracking_uri):
        check_tracking_store(cfg.mlflow.tracking_uri, "--mlflow.tracking_uri", "--mlflow.tracking_uri none")
