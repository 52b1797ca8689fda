"""The serving engine: one thread decodes every request, in cohorts that step in turn.

Requests that arrive together and share decoding settings (rule and its knobs, temperature, top-p,
and the seed where sampling) form one cohort: one `SpeculativeDecoder` over a batch of up to
`max_batch` rows. Cohorts with other settings, or that arrive later, are decoded alongside: the
engine advances every live cohort by one verified block in turn, so a new request starts at the
next turn instead of waiting for earlier ones to finish, and tokens are published after every block.
A row's text comes from its own row of the decoder only; rows never share state but the batch.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from deferral.rules import DeferralRule
from inference.config import DecodeConfig, TokenSpace
from inference.runner import token_space
from inference.serving.requests import CascadeChoice, RequestError, Sampling
from inference.serving.text import TextStream
from inference.speculative import SpeculativeDecoder

# emit(delta_text, done): done is None while decoding, else {"finish_reason", "text", "usage"} or {"error"}
Emit = Callable[[str, dict | None], None]


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    cascade: CascadeChoice
    emit: Emit
    cancelled: bool = False  # set by the HTTP layer when the client goes away
    finished: bool = field(default=False, init=False)

    def key(self) -> tuple:
        s = self.sampling
        seed = s.seed if s.temperature > 0 else None  # greedy output does not depend on the seed
        return self.cascade, s.temperature, s.top_p, seed


def usage(prompt_tokens: int, tokens: list[int], stats) -> dict:
    """OpenAI's token counts plus the cascade's counters for one request."""
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens),
        "target_calls": stats.target_calls, "drafter_calls": stats.drafter_calls, "drafted": stats.drafted,
        "accepted": stats.accepted, "deferred": stats.deferred,
    }


class Cohort:
    """Jobs decoded together in one batch (row i = jobs[i])."""

    def __init__(self, pair, rule: DeferralRule, jobs: list[Job], draft_tokens: int, tokens: TokenSpace,
                 drafting: dict | None = None):
        self.jobs, self.eos = jobs, tokens.eos_ids
        s = jobs[0].sampling
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        cfg = DecodeConfig(draft_tokens=draft_tokens, temperature=s.temperature, top_p=s.top_p,
                           max_new_tokens=max(j.sampling.max_tokens for j in jobs), seed=seed, **(drafting or {}))
        self.decoder = SpeculativeDecoder(
            pair.drafter.model, pair.target.model, rule, [j.prompt_ids for j in jobs], cfg, tokens,
        )
        for i, job in enumerate(jobs):
            self.decoder.state.cap(i, job.sampling.max_tokens)
        decode = pair.tokenizer.decode
        self.streams = [TextStream(lambda t: decode(t, skip_special_tokens=True), j.sampling.stop) for j in jobs]

    @property
    def done(self) -> bool:
        return all(job.finished for job in self.jobs)

    def step(self) -> None:
        state = self.decoder.state
        for i, job in enumerate(self.jobs):
            if job.cancelled and not job.finished:
                job.finished = True
                state.cap(i, 0)
        if self.decoder.active and not self.done:
            self.decoder.step()
        self.publish()

    def publish(self) -> None:
        state = self.decoder.state
        active = set(state.active)
        for i, job in enumerate(self.jobs):
            if job.finished:
                continue
            tokens = state.tokens[i]
            row_done = i not in active
            delta = self.streams[i].update(tokens, final=row_done)
            stopped = self.streams[i].stopped
            if delta:
                job.emit(delta, None)
            if row_done or stopped:
                if stopped:
                    state.cap(i, 0)  # decode no further for this row
                job.finished = True
                eos_end = bool(tokens) and tokens[-1] in self.eos
                job.emit("", {
                    "finish_reason": "stop" if stopped or eos_end else "length",
                    "text": self.streams[i].sent,
                    "usage": usage(len(job.prompt_ids), tokens, state.stats[i]),
                })

    def fail(self, message: str) -> None:
        for job in self.jobs:
            if not job.finished:
                job.finished = True
                job.emit("", {"error": message})


class Engine:
    """Owns the pair; `submit` queues a job (HTTP 429 beyond `max_queue` requests in flight)."""

    def __init__(self, pair, rule_for: Callable[[CascadeChoice], DeferralRule], draft_tokens: int = 5,
                 max_batch: int = 16, max_queue: int = 64, drafting: dict | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.pair, self.rule_for = pair, rule_for
        self.draft_tokens, self.max_batch, self.max_queue = draft_tokens, max_batch, max_queue
        self.drafting = drafting or {}  # DecodeConfig fields every request shares (SERVER_DECODE_FIELDS)
        self.tokens = token_space(pair)
        self._pending: deque[Job] = deque()
        self._cohorts: list[Cohort] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="deferral-engine", daemon=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self.rule_for(job.cascade)  # a rule that cannot be built is the request's error, raised here
        with self._lock:
            if self._in_flight >= self.max_queue:
                raise RequestError(
                    f"the server is at its limit of {self.max_queue} requests in flight: retry shortly", status=429
                )
            self._in_flight += 1
            self._pending.append(job)
        self._wake.set()

    def _admit(self) -> None:
        with self._lock:
            jobs, self._pending = list(self._pending), deque()
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.key(), []).append(job)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch):
                chunk = group[start : start + self.max_batch]
                try:
                    cohort = Cohort(self.pair, self.rule_for(chunk[0].cascade), chunk, self.draft_tokens, self.tokens,
                                    self.drafting)
                    cohort.publish()
                except Exception as exc:  # noqa: BLE001 - one batch's failure must not stop the server
                    for job in chunk:
                        job.finished = True
                        job.emit("", {"error": f"decoding failed: {exc}"})
                    self._release(len(chunk))
                    continue
                self._cohorts.append(cohort)

    def _release(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n

    def _loop(self) -> None:
        while not self._stopping:
            self._admit()
            if not self._cohorts:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            for cohort in list(self._cohorts):
                try:
                    cohort.step()
                except Exception as exc:  # noqa: BLE001 - fail this cohort's requests, keep serving
                    cohort.fail(f"decoding failed: {exc}")
                if cohort.done:
                    self._cohorts.remove(cohort)
                    self._release(len(cohort.jobs))
