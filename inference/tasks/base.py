"""What an evaluation task is: prompts to decode and a scorer for the decoded texts.

Tasks hold no models. The evaluation loop decodes `Example.prompt` (through the pair's chat template
when `Task.chat` says so) and hands the replies back to `Task.score_examples`, which scores each reply
on its own: the report's means come from these, and so do its paired confidence intervals (every rule
decodes the same prompts, so two rules are compared example by example).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from inference.tasks.text_metrics import mean_metrics


@dataclass
class Example:
    id: str
    prompt: str  # text given to the model (a user turn when the task uses the chat template)
    reference: str | None = None  # what a correct continuation looks like, where the task has one
    extra: dict = field(default_factory=dict)  # task-specific data (e.g. HumanEval's problem)


class Task(ABC):
    """One evaluation task. `quality_key` names the metric on the frontier's quality axis."""

    name: str = ""
    quality_key: str = ""
    #: True: prompts are user turns of the chat template; False: raw text continued by the model.
    chat: bool = False

    @abstractmethod
    def examples(self) -> list[Example]: ...

    @abstractmethod
    def score_examples(self, examples: list[Example], replies: list[str]) -> list[dict[str, float]]:
        """Task metrics of each decoded reply (one reply per example, the same keys for every one)."""

    def score(self, examples: list[Example], replies: list[str]) -> dict[str, float]:
        """Task metrics averaged over the examples."""
        return mean_metrics(self.score_examples(examples, replies))

    def describe(self) -> dict:
        """What identifies this task's data (written to results and MLflow)."""
        return {"task": self.name, "quality_key": self.quality_key, "chat": self.chat}
