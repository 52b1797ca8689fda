"""Reference metrics for generated text: exact match of the first line, chrF, ROUGE-L."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def first_line(text: str) -> str:
    """The first non-blank line, stripped of surrounding whitespace ('' when there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_first_line(hypothesis: str, reference: str) -> float:
    """1.0 when the first non-blank lines agree (ignoring surrounding whitespace), else 0.0."""
    return float(first_line(hypothesis) == first_line(reference))


def code_tokens(text: str) -> list[str]:
    """Words and single punctuation characters: `foo(x, 1)` -> foo ( x , 1 )."""
    return _TOKEN.findall(text)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], (prev_diag + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 over code tokens: 2·P·R / (P + R) with P = LCS/|hyp|, R = LCS/|ref|."""
    hyp, ref = code_tokens(hypothesis), code_tokens(reference)
    if not hyp and not ref:
        return 1.0
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (sacrebleu defaults: character 6-grams, β = 2) on a 0-1 scale."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hypothesis, [reference]).score / 100.0


def truncate_lines(text: str, lines: int) -> str:
    """The first `lines` lines of `text` (compare a continuation with a reference of that length)."""
    return "\n".join(text.split("\n")[:lines])


def reference_metrics(hypothesis: str, reference: str) -> dict[str, float]:
    """Exact first line, chrF and ROUGE-L of a continuation cut to the reference's line count."""
    cut = truncate_lines(hypothesis, reference.count("\n") + 1)
    return {
        "exact_line": exact_first_line(hypothesis, reference),
        "chrf": chrf(cut, reference),
        "rouge_l": rouge_l(cut, reference),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means over rows (keys of the first row)."""
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
