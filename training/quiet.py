"""Output of the training commands: what this project says, on stderr, and nothing else.

Lightning and MLflow announce hardware, advertise services and log INFO lines; libraries warn about
their own internals. None of it is actionable for a user of `deferral`, so it is turned off here,
and the training bar counts epochs from 1 to max_epochs on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

from lightning.pytorch.callbacks import TQDMProgressBar

from deferral.outputs import quiet_mlflow
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "mlflow")
NOISY_WARNINGS = (
    r".*LeafSpec.*",  # a deprecation inside Lightning's pytree helper
    r"The number of training batches .* is smaller than the logging interval",
    r"No positive samples",  # torchmetrics; the datamodule says what it means and what to do
    r".*does not have many workers.*",  # data lives in memory: workers would only copy it
)


def quiet_third_party() -> None:
    quiet_mlflow()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Experiment ... not found. Creating it.": creating the experiment is what the user asked for
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar (stderr), with epochs shown as 1..max_epochs instead of 0..max_epochs-1."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        # TQDMProgressBar's own hook, with the epoch numbered from 1 (calling it would draw "Epoch 0" first)
        if getattr(self, "_leave", False):
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.reset()
        bar.total = convert_inf(self.total_train_batches)
        bar.initial = 0
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")


def _on_stderr(init):
    """Lightning builds its bars with file=sys.stdout; stdout is for results."""
    def wrapped(self):
        with contextlib.redirect_stdout(sys.stderr):
            return init(self)
    return wrapped


for _name in ("init_sanity_tqdm", "init_train_tqdm", "init_validation_tqdm", "init_test_tqdm", "init_predict_tqdm"):
    setattr(EpochProgressBar, _name, _on_stderr(getattr(TQDMProgressBar, _name)))
