"""The default router-training mix: code, English prose and chat instructions, interleaved.

`mixed[:PART]` yields, round-robin until every source is exhausted, documents of
- `stdlib:PART`        Python source (code),
- `stdlib-docs:PART`   English prose (docstrings, the language reference),
- `instructions:PART`  user instructions, marked with CHAT_MARKER so that cascade logging sends them
                       through the target's chat template and logs the target's chat replies.
Every source is split from the standard library by file, so the held-out stdlib files (the code
evaluation set) stay out of the training part, and no package documentation (the prose evaluation
set, benchmarks/data/prose_heldout.jsonl) is in it.
"""

from __future__ import annotations

from itertools import zip_longest

from typing import Callable

from training.logs.corpus import Corpus

CHAT_MARKER = "\x1echat\x1e"  # a document starting with this is an instruction for the chat template
MIX_SOURCES = (("stdlib", False), ("stdlib-docs", False), ("instructions", True))


def chat_document(instruction: str) -> str:
    """Mark a document as a chat instruction (see CHAT_MARKER)."""
    return CHAT_MARKER + instruction


def strip_chat_marker(text: str) -> str:
    """The plain text of a document (reference-mode logging scores an instruction as text)."""
    return text[len(CHAT_MARKER):] if text.startswith(CHAT_MARKER) else text


def open_mixed_corpus(part: str, open_corpus: Callable[[str], Corpus]) -> Corpus:
    """The mix of MIX_SOURCES' `part`, each opened with `open_corpus` (corpora.py's, which dispatches
    "mixed" here: passing it keeps the import one-way)."""
    sources = [(open_corpus(f"{name}:{part}"), chat) for name, chat in MIX_SOURCES]

    def documents():
        streams = [
            (chat_document(t) for t in corpus.documents()) if chat else corpus.documents() for corpus, chat in sources
        ]
        for group in zip_longest(*streams):
            yield from (doc for doc in group if doc is not None)

    description = {"kind": "mixed", "part": part, "sources": [corpus.description for corpus, _ in sources]}
    return Corpus(description, documents)
