"""Evaluation tasks: HumanEval pass@1, held-out stdlib continuation, any prompt/reference dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from deferral.errors import DeferralError
from inference.tasks.base import Example, Task


@dataclass(frozen=True)
class TaskOptions:
    """What the command line says about a task; each builder reads the fields it needs."""

    argument: str  # what follows the task's prefix ("hf:FILE" -> "FILE"; "" for a plain name)
    limit: int | None
    chat: bool | None  # None: the task's own default
    seed: int
    prompt_column: str
    reference_column: str | None
    part: str  # stdlib: which files are cut (held-out for evaluation, train for calibration)


def _humaneval(o: TaskOptions) -> Task:
    from inference.tasks.humaneval import HumanEval

    return HumanEval(limit=o.limit, chat=True if o.chat is None else o.chat)


def _stdlib(o: TaskOptions) -> Task:
    from inference.tasks.stdlib_continuation import StdlibContinuation

    if o.chat:
        raise DeferralError("the stdlib task continues raw source text: drop --chat")
    return StdlibContinuation(limit=50 if o.limit is None else o.limit, seed=o.seed, part=o.part)


def _hf(o: TaskOptions) -> Task:
    from inference.tasks.hf_dataset import HFDataset

    return HFDataset(o.argument, o.prompt_column, o.reference_column, limit=o.limit, chat=bool(o.chat))


# The task registry: a name (or a "prefix:" taking an argument) -> its builder. Adding a task is one
# entry here, plus its module and its test.
TASKS: dict[str, Callable[[TaskOptions], Task]] = {"humaneval": _humaneval, "stdlib": _stdlib, "hf:": _hf}


def task_names() -> list[str]:
    return [name + "<dataset or file>" if name.endswith(":") else name for name in TASKS]


TASK_NAMES = task_names()


def _lookup(spec: str) -> tuple[Callable[[TaskOptions], Task], str]:
    """(builder, argument) of a task spec; DeferralError for an unknown one."""
    if spec in TASKS and not spec.endswith(":"):
        return TASKS[spec], ""
    for name, builder in TASKS.items():
        if name.endswith(":") and spec.startswith(name):
            return builder, spec[len(name):]
    raise DeferralError(f"unknown task '{spec}': choose one of {', '.join(task_names())}")


def check_task_name(spec: str) -> None:
    """Fail fast on an unknown task name, before any model is loaded."""
    _lookup(spec)


def check_limit(limit: int | None) -> None:
    """--limit counts examples: None (every example; 50 for stdlib) or at least 1."""
    if limit is not None and limit < 1:
        raise DeferralError(f"--limit must be at least 1 example, got {limit}: give a positive count, or drop --limit")


def make_task(spec: str, limit: int | None = None, chat: bool | None = None, seed: int = 0,
              prompt_column: str = "prompt", reference_column: str | None = "reference", part: str = "heldout") -> Task:
    """Build a task from its command-line name. `chat=None` uses each task's own default; `part`
    picks the stdlib files cut (held-out for evaluation, train for calibration)."""
    builder, argument = _lookup(spec)
    check_limit(limit)
    return builder(TaskOptions(argument, limit, chat, seed, prompt_column, reference_column, part))


__all__ = ["Example", "Task", "TASKS", "TASK_NAMES", "TaskOptions", "check_limit", "check_task_name", "make_task"]
