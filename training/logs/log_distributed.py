"""`deferral log --devices N`: the logging loop as a Lightning predict loop, one process per device.

Each rank iterates the same document stream and logs the chunks c with c % N == rank into its own
shard folder (OUT/shards/rank-R/); `load_logged` merges all ranks in chunk order, so the rows equal a
single-process run's. Resumption works as in one process: finished shards are skipped, whichever rank
(or process count) wrote them. After every rank is done, rank 0 writes the dataset index and tracks.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader, IterableDataset

import lightning as L

from deferral.pair import Pair, load_pair
from training.logs.log_job import LogJob, lock_out, make_job, require_documents, track
from training.logs.log_pipeline import feature_spec


class RankChunks(IterableDataset):
    """The chunks of the current rank, read lazily from the corpus once the process group exists."""

    def __init__(self, job: LogJob):
        self.job = job

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return self.job.rank_chunks(rank)


class LogModule(L.LightningModule):
    """Holds both models (Lightning moves them to each rank's device); predict_step logs one chunk."""

    def __init__(self, job: LogJob, pair: Pair, show_progress: bool):
        super().__init__()
        self.job, self.pair_meta, self.show_progress = job, pair, show_progress
        self.drafter, self.target = pair.drafter.model, pair.target.model  # registered: moved to the device
        self.tally = None
        self.bar = None
        self.stats: dict = {}

    def on_predict_start(self) -> None:
        self.tally = self.job.start(self.global_rank)
        self.bar = self.job.progress_bar(self.global_rank, self.show_progress)

    def predict_step(self, item, batch_idx: int):
        chunk, docs = item
        self.job.log_one(self.pair_meta, self.global_rank, chunk, docs, self.tally, self.bar)
        return None

    def on_predict_end(self) -> None:
        self.bar.close()
        self.stats = self.tally.stats()


def _sum_across_ranks(stats: dict, device: torch.device) -> dict:
    """Position and document counts summed over ranks; wall time is the slowest rank's.

    `device` is the rank's own (trainer.strategy.root_device): NCCL reduces CUDA tensors only,
    gloo CPU tensors."""
    if not torch.distributed.is_initialized():
        return stats
    keys = ["positions", "new_positions", "documents"]
    counts = torch.tensor([float(stats[k]) for k in keys] + [stats["wall_s"]], dtype=torch.float64, device=device)
    summed = counts[:3].clone()
    wall = counts[3:].clone()
    torch.distributed.all_reduce(summed)
    torch.distributed.all_reduce(wall, op=torch.distributed.ReduceOp.MAX)
    total = dict(zip(keys, summed.tolist()))
    total["wall_s"] = wall.item()
    total["positions_per_s"] = total["new_positions"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    return total


def _quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*predict returned None.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def launching_process() -> bool:
    """True in the process the user started; False in the ranks Lightning (or torchrun) starts."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def check_devices(args) -> None:
    """An accelerator or device count this machine lacks fails now in one line, before any model loads."""
    from deferral.errors import DeferralError

    try:
        L.Trainer(accelerator=args.accelerator, devices=args.devices, strategy="ddp", logger=False)
    except Exception as exc:  # MisconfigurationException (no such device), ValueError (unknown name), ImportError
        raise DeferralError(
            f"--accelerator {args.accelerator} --devices {args.devices} is not available here "
            f"({str(exc).splitlines()[0][:160]}): pass an accelerator and device count this machine has "
            "(e.g. --accelerator cpu)"
        ) from None


def main_distributed(args) -> int:
    _quiet_lightning()
    check_devices(args)
    job = make_job(args, world=args.devices)
    require_documents(job.corpus)
    # the user's process holds OUT/.lock for the whole run; the ranks it starts run under it
    with lock_out(job.out) if launching_process() else nullcontext():
        return _log_distributed(args, job)


def _log_distributed(args, job: LogJob) -> int:
    # Load on CPU: Lightning moves the registered models to each rank's device.
    pair = load_pair(args.drafter, args.target, device="cpu", dtype=args.dtype)
    job.use_pair_settings(pair, args.compile)
    job.prepare(pair)  # rank 0 creates the folder before the other ranks start; they only check it
    module = LogModule(job, pair, show_progress=not args.no_progress)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    loader = DataLoader(RankChunks(job), batch_size=None, num_workers=0)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    stats = _sum_across_ranks(module.stats, trainer.strategy.root_device)
    trainer.strategy.barrier()  # every rank's shards are on disk
    if stats["positions"] == 0:  # every rank raises together rather than leaving others at a barrier
        job.finalize(feature_spec(pair, job.cfg.hidden, job.cfg.mode).dim)
    if trainer.global_rank == 0:
        progress = job.finalize(feature_spec(pair, job.cfg.hidden, job.cfg.mode).dim)
        track(args, job, stats, progress)
        print(f"logged {progress['positions']} positions in {progress['shards']} shard(s) to {args.out} "
              f"with {args.devices} processes", file=sys.stderr)
    trainer.strategy.barrier()
    return 0
