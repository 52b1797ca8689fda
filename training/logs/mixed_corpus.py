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

import numpy as np

from deferral.errors import DeferralError
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


SOURCE_NAMES = tuple(name for name, _ in MIX_SOURCES)


def round_robin_sources(counts: list[int], doc_ids: np.ndarray) -> np.ndarray:
    """(N,) index into MIX_SOURCES of the source each document id of the mix came from.

    counts: the number of documents of each source, in MIX_SOURCES order. Inverts the round-robin
    of open_mixed_corpus: a source that runs out drops out of the rotation.
    """
    order = [s for group in zip_longest(*(range(c) for c in counts)) for s, d in enumerate(group) if d is not None]
    doc_ids = np.asarray(doc_ids)
    if doc_ids.size and doc_ids.max() >= len(order):
        raise DeferralError(f"document id {int(doc_ids.max())} lies past the mix's {len(order)} documents")
    return np.asarray(order, dtype=np.int64)[doc_ids] if doc_ids.size else np.zeros(0, dtype=np.int64)


def mixed_document_sources(corpus: dict | None, doc_ids: np.ndarray,
                           open_corpus: Callable[[str], Corpus]) -> np.ndarray:
    """(N,) source name of each document id of a log of the mix (its meta.json's `corpus` description)."""
    if not corpus or corpus.get("kind") != "mixed":
        raise DeferralError(
            "choosing documents by source needs a log of the mixed corpus (`deferral log --data mixed:train`); "
            f"this log is of {(corpus or {}).get('kind', 'an unknown corpus')}: drop the source filter"
        )
    counts = [sum(1 for _ in open_corpus(f"{name}:{corpus['part']}").documents()) for name in SOURCE_NAMES]
    return np.asarray(SOURCE_NAMES)[round_robin_sources(counts, doc_ids)]
