"""Sets of code points (as sorted ranges), their GBNF classes, and JSON string escaping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from pollama.chat.grammar.rules import _class_char

_Ranges: TypeAlias = tuple[tuple[int, int], ...]
_UNIVERSE: _Ranges = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # Unicode scalar values


def _normalize(ranges: Sequence[tuple[int, int]]) -> _Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _subtract(a: _Ranges, b: _Ranges) -> _Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = max(lo, bhi + 1)
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return _normalize(out)


def _intersect(a: _Ranges, b: _Ranges) -> _Ranges:
    return _subtract(a, _subtract(a, b))


def _complement(a: _Ranges) -> _Ranges:
    return _subtract(_UNIVERSE, a)


def _chars(text: str) -> _Ranges:
    return _normalize([(ord(c), ord(c)) for c in text])


def _class(ranges: _Ranges) -> str:
    """A GBNF character class for ``ranges``, negated when that is shorter."""
    outside = _subtract(((0, 0x10FFFF),), ranges)
    negate = len(outside) < len(ranges)
    listed = outside if negate else ranges
    body = "".join(
        _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in listed
    )
    return f"[{'^' if negate else ''}{body}]"


_JSON_SPECIAL: _Ranges = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n"}
_SHORT_ESCAPES |= {0x0D: "\\r", 0x09: "\\t"}
_KEY_CHARS: _Ranges = _subtract(_UNIVERSE, _JSON_SPECIAL)


def _json_char(code: int) -> str:
    """How a JSON string spells the character ``code`` (the escaped form where one is needed)."""
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code < 0x20 or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return chr(code)
