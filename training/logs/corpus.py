"""The corpus type every corpus source returns (corpora.py opens them by spec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass
class Corpus:
    """An ordered document stream plus a JSON description recorded in the dataset's metadata."""

    description: dict
    _documents: Callable[[], Iterator[str]] = field(repr=False)

    def documents(self) -> Iterator[str]:
        """Yield document texts in order; raises DeferralError on a corrupt document."""
        return self._documents()
