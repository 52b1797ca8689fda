"""Logging throughput as a ratio to the bare teacher-forced forward passes of both models.

    python benchmarks/bench_logging.py --drafter PATH [--target PATH] [--data stdlib:heldout]
        [--max-len 512] [--batch-size 8] [--docs 8] [--doc-chars 4000] [--repeats 3] [--device cpu] [--compile auto|on|off]

Both sides see the same documents, windows and batches. "bare" runs the drafter's and the target's
forward passes only; "logging" is the per-shard work of `deferral log` (tokenizing, windowing, both
forward passes, features, labels, sorting, the Arrow shard written and fsynced). The reported ratio
is logging positions/s divided by bare positions/s (1.0 = logging adds nothing to the forward
passes). The two alternate batch by batch so that a shared machine's load falls on both alike;
medians over `--repeats` passes are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch


from deferral.pair import load_pair
from training.logs import logged_data as fmt
from training.logs.corpora import open_corpus
from training.logs.log_pipeline import (
    LogConfig,
    _batches,
    effective_max_len,
    feature_spec,
    make_windows,
    score_windows,
    should_compile,
    tokenize,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _padded(pair, batch, pad: int):
    longest = max(len(w.tokens) for w in batch)
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, w in enumerate(batch):
        ids[b, : len(w.tokens)] = torch.tensor(w.tokens)
        mask[b, : len(w.tokens)] = 1
    return ids.to(pair.device), mask.to(pair.device)


@torch.inference_mode()
def bare_forwards(pair, ids, mask) -> None:
    """Both models' teacher-forced forward passes over one batch, nothing else."""
    pair.drafter.model(input_ids=ids, attention_mask=mask, use_cache=False)
    pair.target.model(input_ids=ids, attention_mask=mask, use_cache=False)


def measure(pair, docs, cfg: LogConfig, repeats: int, folder: Path) -> tuple[float, float, int, list[float]]:
    """(bare seconds, logging seconds, positions) per pass over `docs` (medians over repeats), and the
    bare/logging time ratio of every batch (robust to load spikes on a shared machine).

    Bare and logging alternate batch by batch (in alternating order), so that the load of a shared
    machine falls on both alike. Logging = tokenizing and windowing the documents, score_windows on
    every batch (both forwards, features, labels), sorting the rows and writing the shard.
    """
    pad = pair.pad_id
    dim = feature_spec(pair, cfg.hidden).dim
    max_len = effective_max_len(pair, cfg.max_len)
    bare_runs, log_runs, batch_ratios = [], [], []
    for r in range(repeats):
        prep_s, windows = _timed(pair.device, lambda: [
            w for i, text in docs for w in make_windows(i, tokenize(pair, text), max_len)])
        bare_s, log_s, parts = 0.0, prep_s, []
        for b, batch in enumerate(_batches(windows, cfg.batch_size)):
            ids, mask = _padded(pair, batch, pad)
            bare_before, log_before = bare_s, log_s
            for step in ((0, 1) if (r + b) % 2 == 0 else (1, 0)):
                if step == 0:
                    t, _ = _timed(pair.device, lambda: bare_forwards(pair, ids, mask))
                    bare_s += t
                else:
                    t, rows = _timed(pair.device, lambda: score_windows(pair, batch, cfg.hidden, pad, cfg.compile))
                    log_s += t
                    parts.append(rows)
            batch_ratios.append((bare_s - bare_before) / (log_s - log_before))

        def finish():
            rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            order = np.lexsort((rows["position"], rows["doc_id"]))
            rows = {k: v[order] for k, v in rows.items()}
            fmt.write_shard(fmt.shard_path(folder, 0, 0), fmt.arrow_table(rows, dim))
            return len(order)

        t, positions = _timed(pair.device, finish)
        bare_runs.append(bare_s)
        log_runs.append(log_s + t)
    return statistics.median(bare_runs), statistics.median(log_runs), positions, batch_ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafter", required=True, help="drafter folder / hub id / .gguf sharing the target's tokenizer")
    parser.add_argument("--target", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--data", default="stdlib:heldout")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--docs", type=int, default=8, help="documents per timed pass")
    parser.add_argument("--doc-chars", type=int, default=4000, help="documents cut to this many characters")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", default="auto", help="torch.compile the feature + label step: auto, on, off")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    docs = [(i, text[: args.doc_chars]) for i, text in islice(enumerate(open_corpus(args.data).documents()), args.docs)]
    cfg = LogConfig(max_len=args.max_len, batch_size=args.batch_size,
                    compile=should_compile(args.compile, pair.vocab_size))
    with tempfile.TemporaryDirectory() as tmp:
        measure(pair, docs[:1], cfg, 1, Path(tmp))  # warm-up: allocator, kernels, compilation
        bare, log, positions, ratios = measure(pair, docs, cfg, args.repeats, Path(tmp))
    print(f"pair: drafter={args.drafter} target={args.target or 'default'} device={args.device} dtype={args.dtype} compile={cfg.compile}")
    print(f"batches of {args.batch_size} x {args.max_len} tokens, {positions} positions per pass, {args.repeats} repeats")
    print(f"bare forwards: {positions / bare:9.1f} positions/s  ({bare:.2f} s)")
    print(f"logging:       {positions / log:9.1f} positions/s  ({log:.2f} s)")
    print(f"ratio logging / bare: {bare / log:.3f} (median over {len(ratios)} batches of the per-batch ratio: "
          f"{statistics.median(ratios):.3f}, without tokenizing and shard writing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
