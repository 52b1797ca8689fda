"""Any Hugging Face dataset (or local JSONL/Parquet/CSV file) with a prompt and a reference column.

Scored like code continuation: exact match of the first line, chrF and ROUGE-L against the
reference (cut to the reference's line count). `spec` is `org/name[/config][:split]` (split defaults to test) or a local file path.
"""

from __future__ import annotations

from pathlib import Path

from deferral.errors import DeferralError
from inference.tasks.base import Example, Task
from inference.tasks.text_metrics import reference_metrics

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(spec: str):
    """A `datasets.Dataset` for a hub name[/config][:split] or a local file."""
    import datasets

    path = Path(spec)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise DeferralError(f"dataset file {path} does not exist: check the path")
        if path.stat().st_size == 0:
            raise DeferralError(f"dataset file {path} is empty: add rows with a prompt and a reference column")
        try:
            return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps a parse error of a malformed file in DatasetGenerationError
            cause = str(exc.__cause__ or exc).splitlines()[0][:200]
            raise DeferralError(f"could not read dataset file {path} ({cause}): fix the file") from None
    name, _, split = spec.partition(":")
    parts = name.split("/")
    config = parts.pop() if len(parts) == 3 else None  # org/name/config; one slash is org/name
    name = "/".join(parts)
    try:
        return datasets.load_dataset(name, config, split=split or "test")
    except Exception as exc:  # datasets raises many types for missing names, configs, splits
        raise DeferralError(
            f"could not load dataset '{spec}': {str(exc).splitlines()[0]} (give name[/config][:split] or a local file)"
        ) from None


class HFDataset(Task):
    name = "hf"
    quality_key = "chrf"

    def __init__(self, spec: str, prompt_column: str = "prompt", reference_column: str | None = "reference",
                 limit: int | None = None, chat: bool = False):
        """`reference_column=None` reads prompts only (calibration decodes without scoring)."""
        self.spec, self.prompt_column, self.reference_column = spec, prompt_column, reference_column
        self.limit, self.chat = limit, chat

    def examples(self) -> list[Example]:
        rows = load_rows(self.spec)
        for column in (self.prompt_column, self.reference_column):
            if column is not None and column not in rows.column_names:
                raise DeferralError(
                    f"dataset '{self.spec}' has no column '{column}' (columns: {', '.join(rows.column_names)}): "
                    "pass --prompt-column / --reference-column"
                )
        if self.limit is not None:
            rows = rows.select(range(min(self.limit, len(rows))))
        if len(rows) == 0:
            raise DeferralError(f"dataset '{self.spec}' has no rows: choose another split or file")
        return [
            Example(id=str(i), prompt=str(r[self.prompt_column]),
                    reference=str(r[self.reference_column]) if self.reference_column else None)
            for i, r in enumerate(rows)
        ]

    def score_examples(self, examples: list[Example], replies: list[str]) -> list[dict[str, float]]:
        return [reference_metrics(r, e.reference or "") for e, r in zip(examples, replies)]

    def describe(self) -> dict:
        return {**super().describe(), "spec": self.spec, "limit": self.limit,
                "prompt_column": self.prompt_column, "reference_column": self.reference_column}
