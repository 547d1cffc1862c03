"""Strings: length bounds, ``format`` and ``pattern``.

The GBNF for each format is among the fixed building blocks in ``rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollama.chat.grammar.keywords import MAX_LENGTH
from pollama.chat.grammar.regex import _pattern
from pollama.chat.grammar.rules import _Grammar, _seq
from pollama.chat.grammar.values import _count, _show
from pollama.errors import UnsupportedSchema

_FORMATS = ("date", "time", "date-time", "uuid")


def _string(g: _Grammar, schema: Mapping[str, Any], name: str) -> str:
    """GBNF for a JSON string valid against the string keywords of ``schema``."""
    lo = _count(schema, "minLength", MAX_LENGTH) or 0
    hi = _count(schema, "maxLength", MAX_LENGTH)
    if hi is not None and lo > hi:
        raise UnsupportedSchema("minLength", "is greater than maxLength")
    pattern = schema.get("pattern")
    fmt = schema.get("format")
    if pattern is not None:
        for keyword in ("minLength", "maxLength", "format"):
            if keyword in schema and not (keyword == "minLength" and lo == 0):
                raise UnsupportedSchema(keyword, "cannot be combined with pattern")
        return _pattern(g, pattern, name)
    if fmt is not None:
        if fmt not in _FORMATS:
            raise UnsupportedSchema("format", f"{_show(fmt)}; supported: {', '.join(_FORMATS)}")
        for keyword in ("minLength", "maxLength"):
            if keyword in schema and not (keyword == "minLength" and lo == 0):
                raise UnsupportedSchema(keyword, "cannot be combined with format")
        return f'"\\"" {g.prim(fmt)} "\\""'
    if lo == 0 and hi is None:
        return g.prim("string")
    return _seq('"\\""', g.repeat(g.prim("char"), lo, hi), '"\\""')
