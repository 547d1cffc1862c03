"""A context shift drops whole images: the window it discards never splits one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pollama.runner.step import shift_window
from pollama.runner.vision import offset_in_image, placeholder


def _image(key: int, n: int) -> list[int]:
    return [placeholder(key, i) for i in range(n)]


def test_a_window_ending_inside_an_image_takes_the_rest_of_it() -> None:
    cache = [1, 2, *_image(7, 4), 3, 4]
    assert shift_window(cache, 1, 4) == (1, 6)


def test_a_window_starting_inside_an_image_starts_at_its_first_position() -> None:
    cache = [1, *_image(7, 4), 3, 4, 5]
    assert shift_window(cache, 3, 7) == (1, 7)


def test_text_only_windows_are_unchanged() -> None:
    cache = list(range(1, 20))
    assert shift_window(cache, 4, 11) == (4, 11)


def test_two_adjacent_images_split_at_their_boundary() -> None:
    cache = [1, *_image(7, 3), *_image(9, 3), 2]
    assert shift_window(cache, 1, 4) == (1, 4)  # the first image whole, the second kept


@given(
    st.lists(st.one_of(st.integers(1, 100), st.integers(1, 6)), min_size=1, max_size=12),
    st.data(),
)
def test_no_window_splits_an_image(parts: list[int], data: st.DataObject) -> None:
    # Build a cache of text tokens and images (every other part an image of that size).
    cache: list[int] = []
    for i, part in enumerate(parts):
        cache.extend(_image(i, part) if i % 2 else [part])
    start = data.draw(st.integers(0, len(cache) - 1))
    end = data.draw(st.integers(start, len(cache)))
    lo, hi = shift_window(cache, start, end)
    assert lo <= start and hi >= end
    for edge in (lo, hi):
        if 0 < edge < len(cache):
            assert cache[edge] >= 0 or offset_in_image(cache[edge]) == 0
