"""Sets of code points (as sorted ranges), their GBNF classes, and JSON string escaping.

Patterns, object keys and number digits all reduce to "one character out of
this set"; this file does the set algebra on sorted, merged ranges and spells a
set as the shortest GBNF class, plus how JSON writes a single character. It
imports only ``rules`` (for GBNF's character escapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from pollama.chat.grammar.rules import escape_code

__all__ = [
    "JSON_SPECIAL",
    "KEY_CHARS",
    "UNIVERSE",
    "Ranges",
    "char_class",
    "chars",
    "complement",
    "intersect",
    "json_char",
    "normalize",
    "subtract",
]

Ranges: TypeAlias = tuple[tuple[int, int], ...]
UNIVERSE: Ranges = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # Unicode scalar values


def normalize(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """``ranges`` sorted, with overlapping or touching ranges merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """The code points of ``a`` that are not in ``b``."""
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
    return normalize(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    return subtract(a, subtract(a, b))


def complement(a: Ranges) -> Ranges:
    """Every Unicode scalar value outside ``a`` (surrogates are never characters)."""
    return subtract(UNIVERSE, a)


def chars(text: str) -> Ranges:
    """The set of the characters in ``text``."""
    return normalize([(ord(c), ord(c)) for c in text])


def char_class(ranges: Ranges) -> str:
    """A GBNF character class for ``ranges``, negated when that is shorter."""
    outside = subtract(((0, 0x10FFFF),), ranges)
    negate = len(outside) < len(ranges)
    listed = outside if negate else ranges
    body = "".join(
        _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in listed
    )
    return f"[{'^' if negate else ''}{body}]"


def _class_char(code: int) -> str:
    # Only ASCII letters and digits go in raw: '-', ']', '^' and '\' would mean something.
    ch = chr(code)
    return ch if ch.isascii() and ch.isalnum() else escape_code(code)


JSON_SPECIAL: Ranges = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
"""The characters a JSON string cannot hold raw: controls, '"' and '\\'."""
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n"}
_SHORT_ESCAPES |= {0x0D: "\\r", 0x09: "\\t"}
KEY_CHARS: Ranges = subtract(UNIVERSE, JSON_SPECIAL)
"""The characters an object key spelled without escapes may hold."""


def json_char(code: int) -> str:
    """How a JSON string spells the character ``code`` (the escaped form where one is needed)."""
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code < 0x20 or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return chr(code)
