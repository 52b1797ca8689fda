"""Logging throughput as a ratio to the bare teacher-forced forward passes of both models.

    python benchmarks/bench_logging.py --drafter PATH [--target PATH] [--data stdlib:heldout]
        [--max-len 512] [--batch-size 8] [--docs 8] [--doc-chars 4000] [--repeats 3] [--device cpu] [--compile auto|on|off]

Both sides see the same documents, windows and batches. "bare" runs the drafter's and the target's
forward passes only; "logging" is the whole per-shard work of `deferral log` (tokenizing, windowing,
both forward passes, features, labels, the Arrow shard written and fsynced). The reported ratio is
logging positions/s divided by bare positions/s (1.0 = logging adds nothing to the forward passes).
Each side is timed `--repeats` times, interleaved, and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deferral.pair import load_pair  # noqa: E402
from training import logged_data as fmt  # noqa: E402
from training.corpora import open_corpus  # noqa: E402
from training.log_pipeline import (  # noqa: E402
    LogConfig,
    _batches,
    effective_max_len,
    feature_spec,
    log_chunk,
    make_windows,
    should_compile,
    tokenize,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bare_forwards(pair, docs, cfg: LogConfig) -> tuple[float, int]:
    """Seconds for both models' forward passes over the batches `log_chunk` builds; positions covered."""
    max_len = effective_max_len(pair, cfg.max_len)
    windows = [w for i, text in docs for w in make_windows(i, tokenize(pair, text), max_len)]
    pad = pair.tokenizer.pad_token_id or 0
    batches = []
    for batch in _batches(windows, cfg.batch_size):
        longest = max(len(w.tokens) for w in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, w in enumerate(batch):
            ids[b, : len(w.tokens)] = torch.tensor(w.tokens)
            mask[b, : len(w.tokens)] = 1
        batches.append((ids.to(pair.device), mask.to(pair.device)))
    positions = sum(len(w.tokens) - 1 for w in windows)
    _sync(pair.device)
    start = time.perf_counter()
    for ids, mask in batches:
        pair.drafter.model(input_ids=ids, attention_mask=mask, use_cache=False)
        pair.target.model(input_ids=ids, attention_mask=mask, use_cache=False)
    _sync(pair.device)
    return time.perf_counter() - start, positions


def logging_pass(pair, docs, cfg: LogConfig, folder: Path) -> tuple[float, int]:
    dim = feature_spec(pair, cfg.hidden).dim
    _sync(pair.device)
    start = time.perf_counter()
    rows = log_chunk(pair, docs, cfg)
    fmt.write_shard(fmt.shard_path(folder, 0, 0), fmt.arrow_table(rows, dim))
    _sync(pair.device)
    return time.perf_counter() - start, len(rows["doc_id"])


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
    bare_forwards(pair, docs[:1], cfg)  # warm-up (allocator, kernels)
    bare_s, log_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        logging_pass(pair, docs[:1], cfg, Path(tmp))
        for _ in range(args.repeats):
            t, positions = bare_forwards(pair, docs, cfg)
            bare_s.append(t)
            t, logged = logging_pass(pair, docs, cfg, Path(tmp))
            log_s.append(t)
    assert logged == positions, (logged, positions)
    bare, log = statistics.median(bare_s), statistics.median(log_s)
    print(f"pair: drafter={args.drafter} target={args.target or 'default'} device={args.device} dtype={args.dtype} compile={cfg.compile}")
    print(f"batches of {args.batch_size} x {args.max_len} tokens, {positions} positions per pass, {args.repeats} repeats")
    print(f"bare forwards: {positions / bare:9.1f} positions/s  ({bare:.2f} s)")
    print(f"logging:       {positions / log:9.1f} positions/s  ({log:.2f} s)")
    print(f"ratio logging / bare: {bare / log:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
