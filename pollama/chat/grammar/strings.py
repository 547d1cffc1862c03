"""Strings: length bounds, ``format`` and ``pattern``, and object keys other than some names.

A leaf type: ``string_rule`` turns the string keywords of one schema into a rule
for the JSON strings they allow (the GBNF for each format is among the fixed
building blocks in ``rules``; patterns go to ``regex``), and ``key_except``
spells the keys an object's extra properties may have. It knows nothing of
other types or of subschemas. It imports ``rules``, ``charsets``, ``values``,
``keywords`` (for ``MAX_LENGTH``) and ``regex``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollama.chat.grammar.charsets import (
    JSON_SPECIAL,
    KEY_CHARS,
    char_class,
    chars,
    intersect,
    subtract,
)
from pollama.chat.grammar.keywords import MAX_LENGTH
from pollama.chat.grammar.regex import pattern_rule
from pollama.chat.grammar.rules import Grammar, lit, seq
from pollama.chat.grammar.values import as_count, show
from pollama.errors import UnsupportedSchema

__all__ = ["key_except", "string_rule"]

_FORMATS = ("date", "time", "date-time", "uuid")


def string_rule(g: Grammar, schema: Mapping[str, Any], name: str) -> str:
    """GBNF for a JSON string valid against the string keywords of ``schema``."""
    lo = as_count(schema, "minLength", MAX_LENGTH) or 0
    hi = as_count(schema, "maxLength", MAX_LENGTH)
    if hi is not None and lo > hi:
        raise UnsupportedSchema("minLength", "is greater than maxLength")
    pattern = schema.get("pattern")
    fmt = schema.get("format")
    if pattern is not None:
        for keyword in ("minLength", "maxLength", "format"):
            if keyword in schema and not (keyword == "minLength" and lo == 0):
                raise UnsupportedSchema(keyword, "cannot be combined with pattern")
        return pattern_rule(g, pattern, name)
    if fmt is not None:
        if fmt not in _FORMATS:
            raise UnsupportedSchema("format", f"{show(fmt)}; supported: {', '.join(_FORMATS)}")
        for keyword in ("minLength", "maxLength"):
            if keyword in schema and not (keyword == "minLength" and lo == 0):
                raise UnsupportedSchema(keyword, "cannot be combined with format")
        return f'"\\"" {g.prim(fmt)} "\\""'
    if lo == 0 and hi is None:
        return g.prim("string")
    return seq('"\\""', g.repeat(g.prim("char"), lo, hi), '"\\""')


def key_except(g: Grammar, names: list[str], hint: str) -> str:
    """A JSON string that is none of ``names`` (keys spelled without escapes).

    Extra properties must not repeat a declared name, so the key is a walk down
    a trie of the names that leaves it before reaching the end of one.
    """
    trie: dict[str, Any] = {}
    for key in names:
        if intersect(chars(key), JSON_SPECIAL) or any(0xD800 <= ord(c) <= 0xDFFF for c in key):
            continue  # a raw-only key can never spell this name
        node = trie
        for ch in key:
            node = node.setdefault(ch, {})
        node[""] = {}
    if not trie:
        return g.prim("string")

    def not_in(node: dict[str, Any]) -> str:
        children = sorted(c for c in node if c)
        others = subtract(KEY_CHARS, chars("".join(children)))
        alts = [f"{char_class(others)} key-char*"] if others else []
        alts += [f"{lit(c)} {not_in(node[c])}" for c in children]
        body = " | ".join(alts)
        if "" not in node:
            body = f"( {body} )?" if body else ""
        return g.helper(f"{hint}-key", body)

    g.prim("key-char")
    return f'"\\"" {not_in(trie)} "\\""'
