"""The verified blocks of a cascade log: recovered from the stored positions, and replayed under a
keep/defer decision (what lossless decoding examines; what a rule would commit per target call)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _blocks_of_document(position: np.ndarray, block: int) -> np.ndarray | None:
    """(R,) block index of each row of one document's cascade-log rows, or None when they do not
    form blocks. Rows are sorted by position, stably (rows at one position in decode order); each
    verified block is `block` consecutive positions and starts after the previous block's start, so
    the number of blocks covering x, n(x), fixes the starts: starts(x) = n(x) - n(x-1) + starts(x-block)."""
    lo, hi = int(position.min()), int(position.max())
    n = np.bincount(position - lo, minlength=hi - lo + 1)
    starts = np.zeros_like(n)
    for x in range(len(n)):
        starts[x] = n[x] - (n[x - 1] if x else 0) + (starts[x - block] if x >= block else 0)
        if starts[x] not in (0, 1):  # a decode step commits at least one token: one block per start
            return None
    begin = np.flatnonzero(starts)  # block starts, in decode order
    covered = np.zeros_like(n)
    for b in begin:
        covered[b : b + block] += 1
    if not np.array_equal(covered, n):
        return None
    out = np.empty(len(position), dtype=np.int64)
    for x, rows in zip(*np.unique(position - lo, return_index=True)):
        blocks = np.flatnonzero((begin <= x) & (begin > x - block))  # blocks covering x, in decode order
        out[rows : rows + len(blocks)] = blocks
    return out


def block_ids(doc_id: np.ndarray, position: np.ndarray, block: int) -> np.ndarray:
    """(N,) int64: the verified block each row of a cascade log belongs to (numbered across the
    log), or -1 for the rows of a document that do not form blocks (a cut shard).

    Rows are stored sorted by (doc_id, position); the blocks are recovered from the positions
    (_blocks_of_document)."""
    ids = np.full(len(doc_id), -1, dtype=np.int64)
    order = np.lexsort((position, doc_id))  # the stored order (stable)
    bounds = np.flatnonzero(np.diff(doc_id[order])) + 1
    first = 0
    for rows in np.split(order, bounds):
        blocks = _blocks_of_document(position[rows].astype(np.int64), block)
        if blocks is None:
            continue
        ids[rows] = first + blocks
        first += int(blocks.max()) + 1
    return ids


@dataclass(frozen=True)
class Blocks:
    """The verified blocks of a cascade log, recovered once and replayed under any decision.

    order: (R,) row indices of the rows that form blocks, block by block, in position order within a
        block; starts: (R,) bool, True at each block's first row; rows: N, the log's row count.
    """

    order: np.ndarray
    starts: np.ndarray
    rows: int

    @classmethod
    def of(cls, doc_id: np.ndarray, position: np.ndarray, block: int) -> "Blocks":
        ids = block_ids(doc_id, position, block)
        order = np.lexsort((position, ids))
        order = order[ids[order] >= 0]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = np.diff(ids[order]) != 0
        return cls(order=order, starts=starts, rows=len(doc_id))


def examined_positions(doc_id: np.ndarray, position: np.ndarray, mismatch: np.ndarray, block: int) -> np.ndarray:
    """(N,) bool: the rows of a cascade log that lossless decoding examines.

    A cascade log holds every drafted position of each verified block, but decoding decides a block
    only up to its first mismatch: its later rows are never looked at. A document whose rows do not
    form blocks counts as examined throughout.
    """
    return replay_blocks(doc_id, position, mismatch, np.zeros(len(doc_id), dtype=bool), block).examined


@dataclass
class Replay:
    """A keep/defer decision replayed over the logged blocks (within each block exactly; the text
    after a kept mismatch is the logged one, not what keeping it would have produced).

    examined: (N,) bool, rows the decision looks at (nothing before them in the block was deferred);
        rows of documents without blocks count as examined.
    kept_mismatch: (N,) bool, examined mismatches the decision keeps.
    tokens: (B,) tokens each block commits (rows kept + the correction or the bonus token).
    """

    examined: np.ndarray
    kept_mismatch: np.ndarray
    tokens: np.ndarray

    @property
    def tokens_per_call(self) -> float:
        return float(self.tokens.mean()) if len(self.tokens) else 0.0


def replay(blocks: Blocks, mismatch: np.ndarray, keep: np.ndarray) -> Replay:
    """Replay `keep` ((N,) bool: keep this row's draft if it is a mismatch) over the logged blocks.

    A block keeps its drafts in order while each matches the target or is kept, and stops at the
    first deferred mismatch (whose target token is committed instead); a block kept whole also gets
    the bonus token.
    """
    mismatch = mismatch.astype(bool)
    ok = ~mismatch | keep.astype(bool)
    in_block = ok[blocks.order]  # (R,) block by block
    stop = (~in_block).astype(np.int64)
    block = np.cumsum(blocks.starts) - 1  # (R,) block index of each row
    before = np.cumsum(stop) - stop  # stops before each row, counted from the log's first block row
    before -= before[np.flatnonzero(blocks.starts)][block]  # ... from its own block's first row
    examined = np.ones(blocks.rows, dtype=bool)
    examined[blocks.order] = before == 0  # nothing deferred before this row
    committed = np.bincount(block, weights=(before == 0) & in_block, minlength=int(blocks.starts.sum()))
    tokens = committed.astype(np.int64) + 1  # the correction or the bonus token
    return Replay(examined=examined, kept_mismatch=examined & mismatch & ok, tokens=tokens)


def replay_blocks(doc_id: np.ndarray, position: np.ndarray, mismatch: np.ndarray, keep: np.ndarray,
                  block: int) -> Replay:
    """`replay` over the blocks of rows (doc_id, position) of a log of `block`-token blocks."""
    return replay(Blocks.of(doc_id, position, block), mismatch, keep)
