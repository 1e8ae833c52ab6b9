"""Stop strings found across streamed pieces, with nothing of them ever released."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.text.stop_strings import StopMatcher


def stream(stops, pieces):
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_pieces():
    assert stream(["\nUser:"], ["Hello", " there\n", "Us", "er: more"]) == ("Hello there", True)


def test_held_text_released_when_it_cannot_be_a_stop():
    matcher = StopMatcher(["###"])
    assert matcher.push("a#") == ("a", False)
    assert matcher.push("#b") == ("##b", False)


def test_earliest_of_several_stops_wins():
    assert stream(["END", "STOP"], ["xSTOPyEND"]) == ("x", True)


def test_no_stops_passes_everything():
    assert stream([], ["a", "b"]) == ("ab", False)


@settings(max_examples=400)
@given(
    st.lists(st.text(alphabet="ab#\n", max_size=4), max_size=12),
    st.lists(st.text(alphabet="ab#\n", min_size=1, max_size=3), min_size=1, max_size=2),
)
def test_matches_a_plain_search(pieces, stops):
    """Streaming cuts where a plain search does: at the first piece after which the text so far holds a
    stop string, at the earliest start among the stop strings it then holds."""
    expected = ("".join(pieces), False)
    for k in range(1, len(pieces) + 1):
        so_far = "".join(pieces[:k])
        hits = [i for i in (so_far.find(s) for s in stops) if i >= 0]
        if hits:
            expected = (so_far[: min(hits)], True)
            break
    assert stream(stops, pieces) == expected
