"""Continuation of held-out standard-library code: reference metrics and fidelity to the target.

Held-out files are the `stdlib:heldout` part that `deferral log` never trains on (a fixed tenth of
the standard library, chosen by a hash of each file's relative path: `deferral.stdlib_split.is_heldout`),
without the codec tables. Each example cuts one file at a line: the prompt is up to `context_lines`
lines before the cut, the reference the next `reference_lines` lines. The model continues the raw
text (no chat template).
"""

from __future__ import annotations

import random
from pathlib import Path

from deferral.errors import DeferralError
from inference.tasks.base import Example, Task
from inference.tasks.text_metrics import reference_metrics
from deferral.stdlib_split import is_heldout, stdlib_files, stdlib_root

SKIPPED_PACKAGES = ("encodings/",)  # codec tables: data, not code


def cut_examples(
    files: list[tuple[str, str]], count: int, context_lines: int, reference_lines: int, seed: int
) -> list[Example]:
    """Cut (name, text) files into at most `count` examples at seeded lines.

    Files are visited in a seeded order, one cut per file per round; when `count` exceeds the number
    of files, later rounds cut the same files again at other lines (so the first examples never
    depend on `count`). A cut lands before a non-blank line that has at least `reference_lines`
    lines after it and `min(context_lines, 10)` before it. The prompt ends where its last line ends
    (no newline).
    """
    rng = random.Random(seed)
    order = list(range(len(files)))
    rng.shuffle(order)
    split = [files[i][1].split("\n") for i in range(len(files))]
    earliest = min(context_lines, 10)
    free = {  # file index -> cut lines not used yet
        i: [j for j in range(earliest, len(split[i]) - reference_lines) if split[i][j].strip()] for i in order
    }
    examples = []
    while len(examples) < count and any(free.values()):
        for index in order:
            if len(examples) >= count:
                break
            if not free[index]:
                continue
            cut = free[index].pop(rng.randrange(len(free[index])))
            lines = split[index]
            # The prompt stops before the newline that ends its last line: BPE tokenizers merge a
            # newline with the next line's indentation, so a prompt ending in a bare "\n" would force
            # a token boundary the model never saw in training. The continuation starts with it.
            prompt = "\n".join(lines[max(0, cut - context_lines) : cut])
            reference = "\n".join(lines[cut : cut + reference_lines])
            examples.append(Example(id=f"{files[index][0]}:{cut + 1}", prompt=prompt, reference=reference))
    return examples


def after_line_end(continuation: str) -> str:
    """What follows the newline that closes the prompt's last line: the model's next lines. A
    continuation that first extends the prompt's last line keeps that text as its first line."""
    return continuation[1:] if continuation.startswith("\n") else continuation


class StdlibContinuation(Task):
    name = "stdlib"
    quality_key = "chrf"
    chat = False

    def __init__(self, limit: int = 50, context_lines: int = 40, reference_lines: int = 4, seed: int = 0,
                 root: str | Path | None = None, part: str = "heldout"):
        self.limit, self.context_lines, self.reference_lines, self.seed = limit, context_lines, reference_lines, seed
        self.root = Path(root) if root else stdlib_root()
        if part not in ("heldout", "train"):
            raise DeferralError(f"unknown stdlib part '{part}': use heldout (evaluation) or train (calibration)")
        self.part = part

    def source_files(self) -> list[Path]:
        """The files of this part (held-out by default; `train` for calibrating on text that no
        evaluation uses), of the standard library or of another source folder (`root`)."""
        if self.root == stdlib_root():
            return stdlib_files(self.part)
        if not self.root.is_dir():
            raise DeferralError(f"source folder {self.root} does not exist: pass an existing folder")
        wanted = self.part == "heldout"
        return sorted(p for p in self.root.rglob("*.py") if is_heldout(p.relative_to(self.root).as_posix()) == wanted)

    def examples(self) -> list[Example]:
        files = [(p.relative_to(self.root).as_posix(), p) for p in self.source_files()]
        files = [(name, p.read_text(errors="replace")) for name, p in files if not name.startswith(SKIPPED_PACKAGES)]
        examples = cut_examples(files, self.limit, self.context_lines, self.reference_lines, self.seed)
        if not examples:
            raise DeferralError(f"no {self.part} source files with enough lines under {self.root}: point at another folder")
        return examples

    def score_examples(self, examples: list[Example], replies: list[str]) -> list[dict[str, float]]:
        return [reference_metrics(after_line_end(r), e.reference or "") for e, r in zip(examples, replies)]

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "limit": self.limit, "seed": self.seed,
                "part": self.part, "context_lines": self.context_lines, "reference_lines": self.reference_lines}
