"""Evaluation tasks: HumanEval pass@1, held-out stdlib continuation, any prompt/reference dataset."""

from __future__ import annotations

from deferral.errors import DeferralError
from inference.tasks.base import Example, Task

TASK_NAMES = ["humaneval", "stdlib", "hf:<dataset or file>"]


def check_task_name(spec: str) -> None:
    """Fail fast on an unknown task name, before any model is loaded."""
    if spec not in ("humaneval", "stdlib") and not spec.startswith("hf:"):
        raise DeferralError(f"unknown task '{spec}': choose one of {', '.join(TASK_NAMES)}")


def check_limit(limit: int | None) -> None:
    """--limit counts examples: None (every example; 50 for stdlib) or at least 1."""
    if limit is not None and limit < 1:
        raise DeferralError(f"--limit must be at least 1 example, got {limit}: give a positive count, or drop --limit")


def make_task(spec: str, limit: int | None = None, chat: bool | None = None, seed: int = 0,
              prompt_column: str = "prompt", reference_column: str | None = "reference", part: str = "heldout") -> Task:
    """Build a task from its command-line name. `chat=None` uses each task's own default; `part`
    picks the stdlib files cut (held-out for evaluation, train for calibration)."""
    check_task_name(spec)
    check_limit(limit)
    if spec == "humaneval":
        from inference.tasks.humaneval import HumanEval

        return HumanEval(limit=limit, chat=True if chat is None else chat)
    if spec == "stdlib":
        from inference.tasks.stdlib_continuation import StdlibContinuation

        if chat:
            raise DeferralError("the stdlib task continues raw source text: drop --chat")
        return StdlibContinuation(limit=50 if limit is None else limit, seed=seed, part=part)
    from inference.tasks.hf_dataset import HFDataset  # spec is "hf:<dataset or file>"

    return HFDataset(spec[3:], prompt_column, reference_column, limit=limit, chat=bool(chat))


__all__ = ["Example", "Task", "TASK_NAMES", "check_limit", "check_task_name", "make_task"]
