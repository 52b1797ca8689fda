"""Router training checkpoints that survive interruptions and refuse to resume the wrong run.

- `AtomicCheckpointIO`: every checkpoint is written to a temporary name next to its place, flushed to
  disk and renamed over the old file, so a killed process leaves either the old or the new file whole.
- `EpochCheckpoint`: Lightning's ModelCheckpoint writes last.ckpt only when it also saves a top-k
  checkpoint (when the monitored metric improves); this one writes it after every epoch as well.
- `fingerprint` / `check_resume`: what a checkpoint folder was trained with (the log's identity, the
  target, the splits, the model's settings), stored next to the checkpoints and compared before a
  rerun resumes from last.ckpt.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from deferral.errors import DeferralError
from training.router.export import load_checkpoint_file

FINGERPRINT_FILE = "fingerprint.json"
LOG_KEY = "data.log"  # sha256 of the logged folder's meta.json and run.json
# data settings that change the rows or labels the router learns from (batch sizes change speed only)
DATA_KEYS = ("target", "features", "split_seed", "val_fraction", "test_fraction", "limit_rows")
# model settings that are linked from the data or not the model's own
MODEL_SKIP = ("num_features", "target")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into `.NAME.partial`, fsync, then rename over NAME (local paths)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote stores: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)


class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt (save_last) is rewritten after every epoch, not only on improvement."""

    _last_step_written = -1

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_written = trainer.global_step

    def _save_last_every_epoch(self, trainer) -> None:
        if (
            not self.save_last
            or self._last_step_written == trainer.global_step
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
        ):
            return
        self._last_checkpoint_saved = ""  # save_last="link" would link to a stale top-k file: write it
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # where this callback saves its top-k
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_every_epoch(trainer)  # unless written at this step's validation end


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint to resume from, or one DeferralError line naming the fix when it cannot be read."""
    path = Path(path)
    best = path.with_name("best.ckpt")
    other = f"pass --ckpt_path {best} to resume from the best epoch, or " if best != path and best.is_file() else ""
    # resuming restores optimizer and loop state, which a weights-only load refuses
    return load_checkpoint_file(path, f"{other}delete it to train from scratch", weights_only=False)


def data_identity(path: str | Path) -> str | None:
    """sha256 of a log folder's meta.json and run.json: a folder logged again (other corpus, pair,
    mode or extent) at the same path has another identity. None when neither file exists."""
    digest, found = hashlib.sha256(), False
    for name in ("meta.json", "run.json"):
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
            found = True
    return digest.hexdigest() if found else None


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def fingerprint(data: dict, model: dict, identity: str | None = None) -> dict:
    """{setting: value} of what the checkpoints are trained on (data init args, model init args)."""
    out = {f"data.{k}": _plain(data.get(k)) for k in DATA_KEYS}
    out.update({f"model.{k}": _plain(v) for k, v in sorted(model.items()) if k not in MODEL_SKIP and not k.startswith("_")})
    if identity is not None:
        out[LOG_KEY] = identity
    return out


def fingerprint_of_checkpoint(ckpt: dict) -> dict:
    """The fingerprint a checkpoint's own hyperparameters give (for folders without fingerprint.json)."""
    return fingerprint(dict(ckpt.get("datamodule_hyper_parameters") or {}), dict(ckpt.get("hyper_parameters") or {}))


def write_fingerprint(folder: Path, values: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{FINGERPRINT_FILE}.partial"
    partial.write_text(json.dumps(values, indent=1) + "\n")
    os.replace(partial, folder / FINGERPRINT_FILE)


def check_resume(folder: Path, ckpt: dict, current: dict) -> None:
    """Refuse to resume from `folder`/last.ckpt when it was trained with other data or settings."""
    stored_file = folder / FINGERPRINT_FILE
    stored = json.loads(stored_file.read_text()) if stored_file.is_file() else fingerprint_of_checkpoint(ckpt)
    differ = sorted(k for k in set(stored) & set(current) if stored[k] != current[k])
    if differ:
        shown = "; ".join(
            "another logged dataset (its meta.json/run.json differ)" if k == LOG_KEY
            else f"{k} was {stored[k]!r}, now {current[k]!r}"
            for k in differ
        )
        raise DeferralError(
            f"{folder} holds checkpoints trained with other settings ({shown}): "
            f"rerun with the original settings to resume, or pass another --trainer.default_root_dir "
            f"(or delete {folder}) to train afresh"
        )
