"""Where a decode step's wall time goes: drafting, verification, the rule's decision, bookkeeping.

A PhaseTimer given to the speculative decoder adds each phase's seconds up (synchronising the GPU at
phase boundaries, which costs a little: leave it off when not measuring). Without one the decoder
uses NO_PHASES, which times nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch

PHASES = ("draft", "verify", "rule", "bookkeeping")


class PhaseTimer:
    def __init__(self, device: torch.device | str = "cpu"):
        self.seconds = {name: 0.0 for name in PHASES}
        self.cuda = torch.device(device).type == "cuda"

    @contextmanager
    def __call__(self, phase: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {name: value / total for name, value in self.seconds.items()}


def NO_PHASES(phase: str):  # noqa: N802 - used like a PhaseTimer instance
    return nullcontext()
