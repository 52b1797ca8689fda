"""RouterModule: trains deferral.router.Router on logged positions.

Objectives (chosen in the config):
- classify: binary cross-entropy on the target's "deferral needed" label, optional positive-class
  weight (a number, or "balanced" = negatives/positives of the training split);
- regress: Huber loss on the drafter-minus-target loss gap (gap01 or gap_nll), so that the learned
  rule "defer iff predicted gap > threshold + alpha * TV" is a learned version of the paper's OPT rule.
Both are evaluated as a score for the binary label: AUROC, average precision; a classifier also
gets expected calibration error and the Brier score. Validation scores of the current weights are
turned into a calibration table (score threshold per deferral rate) saved in every checkpoint.
"""

from __future__ import annotations

import os
import sys

import lightning as L
import numpy as np
import torch
from tqdm import tqdm
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError

from deferral.errors import DeferralError
from deferral.router import OBJECTIVES, Router, RouterConfig
from deferral.rules import DEFAULT_CANDIDATES
from training.router.datamodule import DEFAULT_TARGET
from deferral.calibration import build_table

CHECKPOINT_KEY = "deferral"  # our extra state inside Lightning checkpoints


DEFAULT_DEFERRAL_RATE = 0.3  # the export's default threshold gives this deferral rate on held-out data


class RouterModule(L.LightningModule):
    """Args:
        num_features: feature width (linked from data.num_features; never typed by hand).
        target: the data target name (linked from data.target).
        objective: classify or regress.
        hidden, layers, residual, dropout: the Router architecture (deferral.router.RouterConfig).
        lr, weight_decay: AdamW settings; the learning rate follows a cosine decay over max_epochs.
        pos_weight: classify only: weight of the positive class, a number or "balanced" (null = 1).
        huber_delta: regress only: Huber loss transition point.
        alpha: the learned rule's alpha the export is calibrated for (defer iff score - alpha*TV > threshold).
        candidates: how many of the drafter's top tokens the learned rule scores at decode time.
        default_deferral_rate: the deferral rate whose threshold the export uses when none is given.
    """

    def __init__(
        self,
        num_features: int = 0,
        target: str = DEFAULT_TARGET,
        objective: str = "regress",
        hidden: int = 64,
        layers: int = 2,
        residual: bool = True,
        dropout: float = 0.0,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        pos_weight: float | str | None = None,
        huber_delta: float = 1.0,
        alpha: float = 0.0,
        candidates: int = DEFAULT_CANDIDATES,
        default_deferral_rate: float = DEFAULT_DEFERRAL_RATE,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise DeferralError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
        if isinstance(pos_weight, str) and pos_weight != "balanced":
            raise DeferralError(f"model.pos_weight '{pos_weight}' must be a number, 'balanced' or null")
        self.save_hyperparameters()
        self.net = Router(RouterConfig(num_features, hidden, layers, residual, dropout, objective))
        self.register_buffer("positive_weight", torch.tensor(1.0))
        self.metrics = torch.nn.ModuleDict(
            {
                stage: torch.nn.ModuleDict(
                    {"auroc": BinaryAUROC(), "ap": BinaryAveragePrecision(), "ece": BinaryCalibrationError(n_bins=15)}
                )
                for stage in ("val", "test")
            }
        )
        self._collected: dict[str, list[torch.Tensor]] = {}
        self._undefined_warned: set[str] = set()
        self.last_val_metrics: dict[str, float] = {}
        self.calibration: dict | None = None
        self.outputs: dict[str, dict[str, np.ndarray]] = {}  # stage -> held-out scores and labels

    # --- setup ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Copy the training-split normalisation statistics (and class balance) from the data."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "mean", None) is None:
            return
        if dm.mean.numel() != self.hparams.num_features:
            raise DeferralError(
                f"the data has {dm.mean.numel()} features but the model was built for {self.hparams.num_features}"
            )
        self.net.set_normalisation(dm.mean, dm.std)
        if self.hparams.pos_weight == "balanced":
            rate = min(max(dm.pos_rate, 1e-6), 1 - 1e-6)
            self.positive_weight.fill_((1 - rate) / rate)
        elif self.hparams.pos_weight is not None:
            self.positive_weight.fill_(float(self.hparams.pos_weight))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=self.hparams.lr * 0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # --- steps ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, out: torch.Tensor, y_bin: torch.Tensor, y_reg: torch.Tensor) -> torch.Tensor:
        if self.hparams.objective == "classify":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y_bin, pos_weight=self.positive_weight)
        return torch.nn.functional.huber_loss(out, y_reg, delta=self.hparams.huber_delta)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Dropout draws from torch's global generator. Seeded at every epoch's first batch from the run's
        # seed (seed_everything) and the epoch, an epoch's draws do not depend on what ran before it in
        # this process, so a run resumed from an epoch's checkpoint repeats the uninterrupted run's epochs
        # (the training data order is a function of the epoch as well: see datamodule.EpochShuffle).
        seed = os.environ.get("PL_GLOBAL_SEED")
        if batch_idx == 0 and seed is not None:
            torch.manual_seed(int(seed) + int(self.current_epoch))

    def training_step(self, batch, batch_idx):
        x, y_bin, y_reg = batch[0], batch[1], batch[2]
        loss = self.loss(self.net(x), y_bin, y_reg)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, stage: str, batch) -> None:
        x, y_bin, y_reg, tv, gap01, gap_nll, calibrated = batch
        out = self.net(x)
        score = torch.sigmoid(out) if self.hparams.objective == "classify" else out
        self.log(f"{stage}/loss", self.loss(out, y_bin, y_reg), on_epoch=True, batch_size=x.shape[0])
        target = y_bin.long()
        self.metrics[stage]["auroc"].update(score, target)
        self.metrics[stage]["ap"].update(score, target)
        if self.hparams.objective == "classify":
            self.metrics[stage]["ece"].update(score, target)
        for name, t in (("score", score), ("y", y_bin), ("tv", tv), ("gap01", gap01), ("gap_nll", gap_nll),
                        ("calibrated", calibrated)):
            self._collected.setdefault(f"{stage}/{name}", []).append(t.detach().cpu())

    def _undefined_ranking_metrics(self, stage: str, y, values: dict) -> None:
        """AUROC needs both classes and AP a positive: where the split lacks them, report nan (torchmetrics
        returns 0) and say why once per stage on stderr."""
        if y is None or len(y) == 0:
            return
        positives = int((y > 0.5).sum())
        if 0 < positives < len(y):
            return
        values["auroc"] = torch.tensor(float("nan"))
        if positives == 0:
            values["ap"] = torch.tensor(float("nan"))
        if stage not in self._undefined_warned:
            self._undefined_warned.add(stage)
            which = "deferral-needed" if positives else "not deferral-needed"
            tqdm.write(f"warning: {stage} AUROC is undefined: all {len(y)} {stage} positions are {which} under target "
                       f"'{self.hparams.target}' (it needs both classes); reported as nan: log more documents or choose "
                       "another data.target", file=sys.stderr)  # on its own line, above any progress bar

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        m = self.metrics[stage]
        values = {"auroc": m["auroc"].compute(), "ap": m["ap"].compute()}
        got = {k[len(stage) + 1 :]: torch.cat(v).numpy() for k, v in self._collected.items() if k.startswith(stage)}
        self._undefined_ranking_metrics(stage, got.get("y"), values)
        if self.hparams.objective == "classify":
            values["ece"] = m["ece"].compute()
            values["brier"] = torch.tensor(float(np.mean((got["score"] - got["y"]) ** 2)))
        for metric in m.values():
            metric.reset()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "auroc")
        self.outputs[stage] = got
        for k in [k for k in self._collected if k.startswith(stage)]:
            del self._collected[k]
        if stage == "val":
            self.last_val_metrics = {k: float(v) for k, v in values.items()}
            # deferral rates as decoding counts them: over the positions it examines (cascade logs)
            rows = got["calibrated"] > 0.5
            self.calibration = build_table(
                got["score"][rows], got["gap01"][rows], got["gap_nll"][rows], got["tv"][rows],
                alpha=self.hparams.alpha, split="val",
            )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- checkpoint extras: everything `deferral export` needs besides the weights ----------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        checkpoint[CHECKPOINT_KEY] = {
            "calibration": self.calibration,
            "val_metrics": self.last_val_metrics,
            "feature_spec": dm.meta.get("feature_spec") if dm is not None else None,
            "pair": dm.meta.get("pair") if dm is not None else None,
            "data": dm.description() if dm is not None else None,
            "epoch": int(self.current_epoch),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY) or {}
        self.calibration = extra.get("calibration")
        self.last_val_metrics = extra.get("val_metrics") or {}
