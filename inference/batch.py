"""Bookkeeping shared by every decode loop: prompt padding, prefill, stopping, finished rows."""

from __future__ import annotations

import time

import torch

from deferral.errors import DeferralError
from inference.config import DecodeConfig, Generation, RequestStats


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (B, T) ids and a (B, T) validity mask (1 = real token)."""
    if any(len(p) == 0 for p in prompts):
        raise DeferralError("a prompt is empty: give at least one token of text")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        valid[i, width - len(p) :] = 1
    return ids.to(device), valid.to(device)


def prefill(lm, ids: torch.Tensor, valid: torch.Tensor) -> None:
    """Feed every prompt token but the last (the invariant of CachedLM). No-op for 1-token prompts."""
    if ids.shape[1] > 1:
        lm.forward(ids[:, :-1], valid[:, :-1], last_only=True)  # logits unused: skip the output projection
    else:  # initialise the row bookkeeping with an empty cache
        lm.start_empty(ids.shape[0])


def context_room(prompt_tokens: int, max_context: int) -> int:
    """New tokens a prompt leaves room for: the models see at most max_context - 1 positions (one spare)."""
    return max_context - 1 - prompt_tokens


def check_prompt_room(prompts: list[list[int]], max_context: int) -> None:
    """Refuse a prompt that leaves no room for a single new token."""
    for p in prompts:
        if context_room(len(p), max_context) < 1:
            raise DeferralError(
                f"a prompt has {len(p)} tokens but the models' context is {max_context}, which leaves no room for "
                f"new tokens: shorten the prompt to at most {max_context - 2} tokens"
            )


class BatchState:
    """Which rows are still decoding, what each has produced, and when each finished.

    Each row may write min(max_new_tokens, context room) tokens; the speculative loop drafts at most
    `draft_room()` tokens per step, so its verify pass never runs past the context (K is capped near
    the end of the context instead of the budget shrinking by K).
    """

    def __init__(self, prompts: list[list[int]], cfg: DecodeConfig, eos_ids: set[int], max_context: int,
                 first: list[int] | None = None):
        """`first`: the prompts (indices) that start as rows; the others wait for `admit` (default: all)."""
        check_prompt_room(prompts, max_context)
        self.cfg = cfg
        self.eos_ids = eos_ids if cfg.stop_at_eos else set()
        self.max_context = max_context
        self.prompt_lengths = [len(p) for p in prompts]
        self.budget = [min(cfg.max_new_tokens, context_room(len(p), max_context)) for p in prompts]
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.stats = [RequestStats() for _ in prompts]
        self.active: list[int] = list(range(len(prompts))) if first is None else list(first)  # rows' prompt indices
        self.start = time.perf_counter()
        self.row_start = [self.start] * len(prompts)  # when each prompt became a row (its wall_s counts from it)

    def admit(self, indices: list[int]) -> None:
        """Prompts (indices) that become rows now, after the current ones."""
        now = time.perf_counter()
        for i in indices:
            self.row_start[i] = now
        self.active.extend(indices)

    def commit(self, row: int, new: list[int]) -> bool:
        """Append tokens to a row (batch position `row`); return True when the row is finished."""
        idx = self.active[row]
        room = self.budget[idx] - len(self.tokens[idx])
        new = new[:room]
        for j, tok in enumerate(new):
            if tok in self.eos_ids:
                new = new[: j + 1]
                break
        self.tokens[idx].extend(new)
        done = len(self.tokens[idx]) >= self.budget[idx] or bool(new and new[-1] in self.eos_ids)
        if done:
            self.stats[idx].wall_s = time.perf_counter() - self.row_start[idx]
        return done

    def cap(self, idx: int, max_new_tokens: int) -> None:
        """Lower row `idx`'s (original index) token budget; a row already at it finishes at its next
        commit, which keeps no more tokens (a server ends a request early this way)."""
        self.budget[idx] = min(self.budget[idx], max(int(max_new_tokens), len(self.tokens[idx])))

    def draft_room(self) -> int:
        """The most tokens one step may draft: every active row's verify pass (its last committed token
        plus the drafts) must stay within the context. At least 1 while a row is unfinished."""
        return min(context_room(self.prompt_lengths[i] + len(self.tokens[i]), self.max_context) for i in self.active)

    def count(self, row: int, **increments: int) -> None:
        stats = self.stats[self.active[row]]
        for key, value in increments.items():
            setattr(stats, key, getattr(stats, key) + int(value))

    def drop(self, finished: list[int], lms: list, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Remove finished batch rows from the caches and from per-row tensors."""
        if not finished:
            return list(tensors)
        keep = [r for r in range(len(self.active)) if r not in set(finished)]
        self.active = [self.active[r] for r in keep]
        rows = torch.tensor(keep, dtype=torch.long, device=lms[0].device)
        for lm in lms:
            lm.select_rows(rows)
        return [t[rows] for t in tensors]

    def results(self) -> list[Generation]:
        for idx, stats in enumerate(self.stats):
            stats.new_tokens = len(self.tokens[idx])
            if stats.wall_s == 0.0:
                stats.wall_s = time.perf_counter() - self.row_start[idx]
        return [Generation(tokens=t, stats=s) for t, s in zip(self.tokens, self.stats)]


class RowQueue:
    """Prompts waiting for a row of a batch of `slots` rows, in order. Joining costs a prefill forward
    of each model (eager: its width varies), so prompts join a quarter of the rows at a time, or the
    last few waiting, or whenever the batch is empty."""

    def __init__(self, n_prompts: int, slots: int | None):
        self.slots = n_prompts if slots is None else max(1, slots)
        self.first = list(range(min(self.slots, n_prompts)))  # prompts that start as rows
        self.waiting = list(range(len(self.first), n_prompts))
        self.join_at = max(1, self.slots // 4)

    def take(self, rows: int) -> list[int]:
        """The prompts that join a batch of `rows` live rows now (removed from the line)."""
        room = self.slots - rows
        if room <= 0 or not self.waiting or (rows and room < min(self.join_at, len(self.waiting))):
            return []
        joining, self.waiting = self.waiting[:room], self.waiting[room:]
        return joining


def join_rows(lms: list, state: BatchState, prompts: list[list[int]], joining: list[int], pad_id: int,
              device, counters: tuple[str, ...]) -> torch.Tensor:
    """Make prompts `joining` (indices) rows of the batch: every cache adds their rows and is fed their
    prompts but the last token in one forward (`join`; the rows already decoding see holes there).
    Counts that forward under `counters`. Returns the (m,) last prompt tokens."""
    ids, valid = left_pad([prompts[i] for i in joining], pad_id, device)  # (m, T)
    b, m, width = len(state.active), len(joining), ids.shape[1]
    for lm in lms:
        if width > 1:
            lm.join(ids[:, :-1], valid[:, :-1])
        else:
            lm.add_rows(m)
    state.admit(joining)
    for row in range(b, b + m):
        state.count(row, **{name: width > 1 for name in counters})
    return ids[:, -1]
