"""The logging job behind `deferral log`: what decides an output folder's rows (LogJob), the loop
that fills it shard by shard (resumable after any interruption), its lock and its MLflow record.

Used by the one-process command (log_cli.py) and the several-process one (log_distributed.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Iterator

from deferral.cli_args import config_from_args
from deferral.errors import DeferralError
from deferral.outputs import quiet_mlflow, read_json_record
from training.logs import logged_data as fmt
from training.logs.corpora import Corpus, open_corpus
from training.logs.log_pipeline import LOG_FLAGS_SKIPPED, LogConfig, feature_spec, log_chunk, should_compile

LOCK_FILE = ".lock"  # OUT/.lock: flock-ed by the process writing OUT for its whole run


def log_config(args) -> LogConfig:
    cfg = config_from_args(LogConfig, args, skip=LOG_FLAGS_SKIPPED,
                           generator=args.generator or ("speculative" if args.mode == "cascade" else "target"))
    cfg.validate()
    should_compile(args.compile, 0)  # an unknown choice fails before any model loads
    if args.docs_per_shard < 1:
        raise DeferralError(f"--docs-per-shard must be at least 1, got {args.docs_per_shard}")
    for flag in ("max_docs", "max_positions", "doc_chars"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DeferralError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    return cfg


def capped_update(bar):
    """bar.update that stops at the bar's total: the last chunk decodes past the position budget
    and is cut when written, and a bar past its total turns into a bare counter."""
    def update(n: int) -> None:
        bar.update(max(0, min(n, bar.total - bar.n)) if bar.total else n)
    return update


@dataclass
class LogJob:
    """Everything that decides the rows of an output folder, and the loop that fills it."""

    corpus: Corpus
    cfg: LogConfig
    out: Path
    docs_per_shard: int
    max_docs: int | None
    max_positions: int | None
    dtype: str
    world: int = 1
    doc_chars: int | None = None

    def use_pair_settings(self, pair, compile_choice: str) -> None:
        """Settings that depend on the loaded pair (whether compiling pays off)."""
        self.cfg = replace(self.cfg, compile=should_compile(compile_choice, pair.vocab_size))

    def position_budget(self) -> int | None:
        """Positions this rank may log (the global limit split evenly across ranks)."""
        return None if self.max_positions is None else math.ceil(self.max_positions / self.world)

    def fingerprint(self, pair) -> dict:
        """The arguments a resumed run must share with the run that started the folder."""
        cfg = asdict(self.cfg)
        cfg.pop("batch_size")  # batching and compilation change speed, not rows
        cfg.pop("compile")
        cfg.pop("rollout_batch_size")
        if cfg["mode"] != "cascade":
            cfg.pop("horizon")
        if cfg["mode"] == "reference":
            for key in ("prompt_tokens", "max_new_tokens", "generator", "alpha", "temperature", "draft_tokens", "seed"):
                cfg.pop(key)
        return {
            "corpus": self.corpus.description,
            "pair": pair.identity(),
            "dtype": self.dtype,
            "log_config": cfg,
            "docs_per_shard": self.docs_per_shard,
            "max_docs": self.max_docs,
            "position_budget_per_rank": self.position_budget(),
            **({"doc_chars": self.doc_chars} if self.doc_chars else {}),  # absent = whole documents
        }

    def prepare(self, pair) -> None:
        """Create the folder (meta.json, run.json) or check that it was started with the same arguments."""
        run = self.fingerprint(pair)
        run_path = self.out / "run.json"
        if run_path.is_file():
            previous = read_json_record(run_path, f"choose a new --out, or delete {self.out} to start it over")
            if previous != json.loads(json.dumps(run)):
                keys = sorted(k for k in set(previous) | set(run) if previous.get(k) != json.loads(json.dumps(run)).get(k))
                raise DeferralError(
                    f"{self.out} was started with different arguments ({', '.join(keys)} differ): rerun with the "
                    f"original flags to resume, or choose a new --out"
                )
            return
        if self.out.exists() and any(p.name != LOCK_FILE for p in self.out.iterdir()):
            raise DeferralError(f"{self.out} exists and is not a `deferral log` folder: choose a new or empty --out")
        spec = feature_spec(pair, self.cfg.hidden, self.cfg.mode)
        meta = fmt.build_meta(spec, pair.identity(), self.corpus.description, self.cfg.mode,
                              extra={"log_config": asdict(self.cfg)})
        fmt.write_json_atomic(self.out / "meta.json", meta)
        fmt.write_json_atomic(run_path, run)  # last: its presence marks a started folder

    def chunks(self) -> Iterator[tuple[int, list[tuple[int, str]]]]:
        """(chunk index, [(doc_id, text)]) in corpus order, docs_per_shard documents per chunk."""
        docs = enumerate(self.corpus.documents())
        if self.max_docs is not None:
            docs = islice(docs, self.max_docs)
        if self.doc_chars is not None:
            docs = ((i, text[: self.doc_chars]) for i, text in docs)
        chunk = 0
        while batch := list(islice(docs, self.docs_per_shard)):
            yield chunk, batch
            chunk += 1

    def rank_chunks(self, rank: int) -> Iterator[tuple[int, list[tuple[int, str]]]]:
        """This rank's chunks: chunk c belongs to rank c % world."""
        for chunk, docs in self.chunks():
            if chunk % self.world == rank:
                yield chunk, docs

    def start(self, rank: int) -> "Tally":
        """Clean up after a killed writer of this rank and note which shards are finished."""
        fmt.remove_partial_shards(self.out, rank)
        return Tally(done=fmt.finished_shards(self.out), start=time.perf_counter())

    def log_one(self, pair, rank: int, chunk: int, docs: list[tuple[int, str]], tally: "Tally", bar=None) -> bool:
        """Log one chunk unless its shard is finished; False once this rank's position budget is spent."""
        budget = self.position_budget()
        if budget is not None and tally.logged >= budget:
            return False
        tally.docs += len(docs)
        if chunk in tally.done:  # finished by an earlier (interrupted) run
            rows_done = fmt.shard_rows(tally.done[chunk])
            tally.logged += rows_done
            if bar is not None:
                bar.update(rows_done)
            return True
        remaining = None if budget is None else budget - tally.logged
        rows = log_chunk(pair, docs, self.cfg, progress=capped_update(bar) if bar is not None else None, max_rows=remaining)
        table = fmt.arrow_table(rows, feature_spec(pair, self.cfg.hidden, self.cfg.mode).dim)
        fmt.write_shard(fmt.shard_path(self.out, rank, chunk), table)
        tally.logged += table.num_rows
        tally.new += table.num_rows
        tally.shards.append(chunk)
        # Informational: the shards themselves are the record of what is finished.
        fmt.write_json_atomic(fmt.shard_path(self.out, rank, 0).parent / "progress.json",
                              {"rank": rank, "shards_this_run": tally.shards, "positions": tally.logged})
        if bar is not None:
            bar.n = tally.logged  # what the shards hold: a chunk cut at the budget logged fewer than it decoded
            bar.set_postfix(docs=tally.docs, shard=chunk)
            self._estimate_total(bar, tally)
        return True

    def documents_total(self) -> int | None:
        """Documents this run will read, when the corpus knows its size (one per file, or dataset rows)."""
        d = self.corpus.description
        known = d.get("rows") if d.get("kind", "").startswith("hf") else d.get("files") if d.get("kind") in (
            "stdlib", "directory") else None
        if known is None:
            return self.max_docs
        return min(known, self.max_docs) if self.max_docs is not None else known

    def _estimate_total(self, bar, tally: "Tally") -> None:
        """Without --max-positions, extrapolate the bar's total from positions per document so far (for ETA)."""
        total_docs = self.documents_total()
        if self.max_positions is None and total_docs and tally.docs:
            bar.total = max(tally.logged, round(tally.logged / tally.docs * total_docs / self.world))
            bar.refresh()

    def progress_bar(self, rank: int, show: bool):
        from tqdm import tqdm

        return tqdm(total=self.position_budget(), unit="pos", desc="logging", disable=not show or rank != 0,
                    dynamic_ncols=True, smoothing=0.1)

    def run(self, pair, rank: int = 0, show_progress: bool = True) -> dict:
        """Log every chunk of this rank that has no finished shard yet; return counts for tracking."""
        tally = self.start(rank)
        with self.progress_bar(rank, show_progress) as bar:
            for chunk, docs in self.rank_chunks(rank):
                if not self.log_one(pair, rank, chunk, docs, tally, bar):
                    break
        return tally.stats()

    def finalize(self, feature_dim: int) -> dict:
        """After every rank finished: check the result, write the datasets index and progress.json."""
        shards = fmt.finished_shards(self.out)
        positions = sum(fmt.shard_rows(p) for p in shards.values())
        if positions == 0:
            raise DeferralError(
                f"corpus {self.corpus.description.get('spec')} gave no positions (documents need at least 2 tokens): "
                f"check --data, --text-column and --max-docs"
            )
        fmt.write_dataset_index(self.out, feature_dim)
        progress = {"complete": True, "shards": len(shards), "positions": positions}
        fmt.write_json_atomic(self.out / "progress.json", progress)
        return progress


@dataclass
class Tally:
    """Counts of one rank's run."""

    done: dict
    start: float
    logged: int = 0  # positions in this rank's shards, finished earlier or now
    new: int = 0  # positions logged by this process
    docs: int = 0
    shards: list = field(default_factory=list)  # chunks written by this process

    def stats(self) -> dict:
        wall = time.perf_counter() - self.start
        return {"positions": self.logged, "new_positions": self.new, "documents": self.docs, "wall_s": wall,
                "positions_per_s": self.new / wall if wall > 0 else 0.0}


def lock_out(out: Path):
    """Open and flock OUT/.lock (an open file: `with lock_out(out):` holds it until the block ends;
    the system drops it when the process dies, kill -9 included). A folder another process holds is
    refused: two writers would each count the other's shards and leave run.json contradicting the rows."""
    import fcntl

    if out.exists() and not out.is_dir():
        raise DeferralError(f"--out {out} is a file: choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise DeferralError(
            f"{out} is being written by another `deferral log` process{f' (pid {holder})' if holder else ''}: "
            "wait for it to finish (then rerun to resume), or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def require_documents(corpus: Corpus) -> None:
    """Fail before loading any model when the corpus holds no document at all."""
    if next(iter(corpus.documents()), None) is None:
        raise DeferralError(f"corpus {corpus.description.get('spec')} is empty: check --data (and --text-column)")


def make_job(args, world: int = 1) -> LogJob:
    corpus = open_corpus(args.data, text_column=args.text_column, txt_docs=args.txt_docs, hf_config=args.hf_config)
    return LogJob(corpus=corpus, cfg=log_config(args), out=Path(args.out), docs_per_shard=args.docs_per_shard,
                  max_docs=args.max_docs, max_positions=args.max_positions, dtype=args.dtype, world=world,
                  doc_chars=args.doc_chars)


def track(args, job: LogJob, stats: dict, progress: dict) -> None:
    """Record parameters, corpus, position counts and throughput in MLflow (local sqlite store by default)."""
    if args.no_tracking:
        return
    import logging

    quiet_mlflow()
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    try:
        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(args.experiment)
        with mlflow.start_run(run_name=f"log {Path(args.out).name}"):
            params = {k: v for k, v in vars(args).items() if k not in ("config", "no_progress") and v is not None}
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.set_tags({"command": "log", "corpus.kind": job.corpus.description.get("kind", "")})
            mlflow.log_dict(job.corpus.description, "corpus.json")
            mlflow.log_metrics({**{k: float(v) for k, v in stats.items()}, "total_positions": float(progress["positions"]),
                                "shards": float(progress["shards"])})
    except Exception as exc:  # a broken tracking store must not lose a finished dataset
        raise DeferralError(
            f"the dataset in {args.out} is complete, but MLflow tracking at {args.tracking_uri} failed "
            f"({type(exc).__name__}: {exc}): fix --tracking-uri or pass --tracking-uri none"
        ) from None
