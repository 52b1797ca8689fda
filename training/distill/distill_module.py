"""LightningModule and DataModule for knowledge distillation of a drafter from a frozen target.

Loss per token: KL(p_target || q_drafter) over the whole vocabulary, or over the target's top-k tokens
(renormalised) when `topk` is set. The target is computed on the fly from the same token blocks, so no
logits are stored; it is kept outside the module's parameters and checkpoints.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset


class ResumableShuffle(Sampler):
    """Seeded shuffles, a fresh one per pass, starting `start` samples into the stream of passes.

    A resumed fit starts at the sample after the last one trained on, so it neither repeats the data it
    already saw nor restarts the first pass (pass e's order is randperm(n, seed + e)).
    """

    def __init__(self, n: int, seed: int, start: int = 0):
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.n)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return 1 << 40  # endless: max_steps ends the fit


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, topk: int | None, chunk: int = 8192):
    """Mean KL over tokens and the top-1 agreement count.

    student_logits, teacher_logits: (N, V). Computed in fp32, in chunks of rows to bound memory.
    Returns (mean KL, number of rows whose argmaxes agree).
    """
    total = student_logits.new_zeros((), dtype=torch.float32)
    agree = 0
    n = student_logits.shape[0]
    for i in range(0, n, chunk):
        s = student_logits[i : i + chunk].float()
        t = teacher_logits[i : i + chunk].float()
        log_q = F.log_softmax(s, dim=-1)
        if topk:
            t_val, t_idx = t.topk(topk, dim=-1)  # (n, k)
            log_p = F.log_softmax(t_val, dim=-1)
            total = total + (log_p.exp() * (log_p - log_q.gather(-1, t_idx))).sum()
        else:
            log_p = F.log_softmax(t, dim=-1)
            total = total + (log_p.exp() * (log_p - log_q)).sum()
        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
    return total / max(n, 1), agree


class DistillModule(L.LightningModule):
    def __init__(self, student, teacher, vocab_size: int, lr: float = 2e-3, weight_decay: float = 0.1,
                 warmup_steps: int = 100, total_steps: int = 1000, topk: int | None = None, min_lr_ratio: float = 0.1):
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained, never checkpointed
        self.vocab_size = vocab_size

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval().requires_grad_(False)

    def _teacher_logits(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(input_ids=ids).logits[..., : self.vocab_size]

    def training_step(self, batch, batch_idx):
        (ids,) = batch  # (B, T) token ids
        ids = ids.long()
        teacher = self._teacher_logits(ids)
        student = self.student(input_ids=ids).logits[..., : self.vocab_size]
        kl, agree = distill_loss(student.flatten(0, 1), teacher.flatten(0, 1), self.hparams.topk)
        self.log("train/kl", kl, prog_bar=True)
        self.log("train/agree", agree / ids.numel(), prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return kl

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        (ids,) = batch
        ids = ids.long()
        teacher = self._teacher_logits(ids)
        student = self.student(input_ids=ids).logits[..., : self.vocab_size]
        kl, agree = distill_loss(student.flatten(0, 1), teacher.flatten(0, 1), None)
        name = self.trainer.datamodule.val_names[dataloader_idx]
        self.log(f"val/kl_{name}", kl, add_dataloader_idx=False)
        self.log(f"val/agree_{name}", agree / ids.numel(), add_dataloader_idx=False, prog_bar=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=(0.9, 0.95),  # not fused: Lightning clips gradients
        )
        warmup, total, floor = self.hparams.warmup_steps, self.hparams.total_steps, self.hparams.min_lr_ratio

        def schedule(step: int) -> float:  # linear warm-up, then cosine down to floor * lr
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BlockDataModule(L.LightningDataModule):
    """Training blocks (N, T) shuffled with a seeded generator; named held-out sets for validation."""

    def __init__(self, train: torch.Tensor, val: dict[str, torch.Tensor], batch_size: int, seed: int,
                 val_batch_size: int | None = None):
        super().__init__()
        self.train_blocks, self.val = train, val
        self.val_names = list(val)
        self.batch_size, self.seed = batch_size, seed
        self.val_batch_size = val_batch_size or batch_size

    def train_dataloader(self):
        done = self.trainer.global_step if self.trainer is not None else 0  # restored before this is called
        sampler = ResumableShuffle(self.train_blocks.shape[0], self.seed, start=done * self.batch_size)
        return DataLoader(TensorDataset(self.train_blocks), batch_size=self.batch_size, sampler=sampler,
                          drop_last=True, num_workers=0)

    def val_dataloader(self):
        return [DataLoader(TensorDataset(self.val[n]), batch_size=self.val_batch_size) for n in self.val_names]
