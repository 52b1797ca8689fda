"""Streaming text deltas: stop strings cut the text and are never sent in part; unfinished characters wait."""

from __future__ import annotations

from inference.serving.text import TextStream, find_stop, held_back


def stream_of(pieces: list[str], stops: list[str]) -> tuple[list[str], TextStream]:
    """Feed a growing text (token i = pieces[i]) and collect the deltas, the last update final."""
    s = TextStream(lambda toks: "".join(pieces[t] for t in toks), stops)
    deltas = [s.update(list(range(n + 1)), final=n == len(pieces) - 1) for n in range(len(pieces))]
    return deltas, s


def test_a_stop_string_split_over_tokens_is_never_sent():
    deltas, s = stream_of(["ab", "c\n", "\nd", "ef"], ["\n\n"])
    assert "".join(deltas) == "abc" and s.stopped
    assert deltas[1] == "c"  # "\n" waits: it may start the stop string


def test_a_held_prefix_that_does_not_become_a_stop_is_released():
    deltas, s = stream_of(["x", "E", "N", "Z"], ["END"])
    assert deltas == ["x", "", "", "ENZ"] and not s.stopped


def test_the_final_update_releases_everything_but_the_stop():
    deltas, _ = stream_of(["hello", " E"], ["END"])
    assert "".join(deltas) == "hello E"


def test_an_unfinished_character_waits_for_its_bytes():
    s = TextStream(lambda toks: ["a\ufffd", "aé"][len(toks) - 1], [])
    assert s.update([0]) == "a" and s.update([0, 1], final=True) == "é"


def test_find_stop_and_held_back():
    assert find_stop("abcSTOPdefEND", ["END", "STOP"]) == 3
    assert find_stop("abc", ["x"]) is None
    assert held_back("abcST", ["STOP"]) == 2 and held_back("abc", ["STOP"]) == 0
