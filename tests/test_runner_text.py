"""Stop sequences across token boundaries and UTF-8 split across tokens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pollama.runner.text import StreamedText


def run(pieces: list[bytes], stops: list[str]) -> tuple[list[str], bool]:
    streamed = StreamedText(stops)
    out: list[str] = []
    for piece in pieces:
        result = streamed.feed(piece)
        out.append(result.text)
        if result.stopped:
            return out, True
    final = streamed.finish()
    out.append(final.text)
    return out, final.stopped


def expected(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut == -1 else text[:cut]


def test_stop_split_over_tokens_never_leaks():
    out, stopped = run([b"Hello <", b"|im", b"_end|> more"], ["<|im_end|>"])
    assert stopped
    assert "".join(out) == "Hello "
    assert not any("<" in piece for piece in out)


def test_partial_stop_that_does_not_complete_is_released():
    out, stopped = run([b"a <", b"b", b"c"], ["<|end|>"])
    assert not stopped
    assert out == ["a ", "<b", "c", ""]  # "<" held only while it could begin the stop


def test_utf8_character_split_across_tokens_is_held():
    snowman = "☃".encode()
    out, _ = run([b"x", snowman[:1], snowman[1:2], snowman[2:], b"y"], [])
    assert out == ["x", "", "", "☃", "y", ""]


def test_earliest_stop_wins():
    out, stopped = run([b"one two three"], ["three", "two"])
    assert stopped and "".join(out) == "one "


alphabet = st.sampled_from(list("ab<|>☃é \n"))


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet, max_size=40),
    stops=st.lists(st.text(alphabet, min_size=1, max_size=5), max_size=3),
    cuts=st.lists(st.integers(0, 200), max_size=12),
)
def test_any_chunking_gives_the_text_before_the_first_stop(text, stops, cuts):
    data = text.encode()
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, stopped = run(pieces, stops)
    assert "".join(out) == expected(text, stops)
    assert stopped == any(s in text for s in stops)
    # No prefix of what was released ever contained a whole stop sequence.
    released = ""
    for piece in out:
        released += piece
        assert not any(s in released for s in stops)
