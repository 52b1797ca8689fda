"""Text deltas for streaming: decode a request's growing token list, cut at stop strings, and hold
back what may still change (an unfinished UTF-8 character, the start of a stop string). Pure."""

from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an unfinished multi-byte character to


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of text that must wait: a proper prefix of a stop string, or replacement
    characters of a character whose remaining bytes are in tokens not yet generated."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    tail = len(text) - len(text.rstrip(REPLACEMENT))
    return max(hold, tail)


class TextStream:
    """The text one request has produced so far, released in deltas.

    `update(tokens, final)` decodes every token generated so far; it returns the text that can be
    sent now (never text past a stop string) and whether a stop string was found (the request ends).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode, self.stops = decode, stops
        self.sent = ""
        self.stopped = False

    def update(self, tokens: list[int], final: bool = False) -> str:
        text = self.decode(tokens)
        cut = find_stop(text, self.stops)
        if cut is not None:
            text, self.stopped = text[:cut], True
        elif not final:
            text = text[: len(text) - held_back(text, self.stops)]
        if not text.startswith(self.sent):  # a re-tokenised prefix changed: wait for it to settle
            return ""
        delta = text[len(self.sent):]
        self.sent = text
        return delta
