"""``pattern``: a parser for the ECMA-262 subset we support, and its conversion to GBNF.

A leaf type: it turns one pattern string into the rule for the JSON strings
that match it, and knows nothing else about schemas. It parses the pattern into
a small tree (refusing what a grammar cannot express) and writes the tree as
GBNF over JSON-escaped characters. It imports ``rules``, ``charsets``,
``values`` (to show a bad value) and ``keywords`` (for ``MAX_LENGTH``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NoReturn, TypeAlias

from pollama.chat.grammar.charsets import (
    JSON_SPECIAL,
    UNIVERSE,
    Ranges,
    char_class,
    complement,
    intersect,
    json_char,
    normalize,
    subtract,
)
from pollama.chat.grammar.keywords import MAX_LENGTH
from pollama.chat.grammar.rules import Grammar, lit, paren, seq
from pollama.chat.grammar.values import show
from pollama.errors import UnsupportedSchema

__all__ = ["pattern_rule"]

_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: Ranges = normalize(
    [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)]
    + [(0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
)
_LINE_TERMINATORS: Ranges = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))


# ---- parsing


@dataclass(frozen=True)
class _RChars:
    ranges: Ranges


@dataclass(frozen=True)
class _RSeq:
    items: tuple[_RNode, ...]


@dataclass(frozen=True)
class _RAlt:
    options: tuple[_RNode, ...]


@dataclass(frozen=True)
class _RRepeat:
    item: _RNode
    lo: int
    hi: int | None


@dataclass(frozen=True)
class _RAnchor:
    at_end: bool


_RNode: TypeAlias = _RChars | _RSeq | _RAlt | _RRepeat | _RAnchor


@dataclass
class _RegexParser:
    """A parser for the subset of ECMA-262 regular expressions we can turn into GBNF."""

    src: str
    pos: int = field(default=0)

    def fail(self, why: str) -> NoReturn:
        raise UnsupportedSchema("pattern", f"{why} in {self.src!r}")

    def parse(self) -> _RNode:
        node = self._alternation()
        if self.pos < len(self.src):
            self.fail(f"unbalanced ')' at offset {self.pos}")
        return node

    def _peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.src[i] if i < len(self.src) else None

    def _alternation(self) -> _RNode:
        options = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else _RAlt(tuple(options))

    def _sequence(self) -> _RNode:
        items: list[_RNode] = []
        while (c := self._peek()) is not None and c not in "|)":
            items.append(self._quantified(self._atom()))
        return items[0] if len(items) == 1 else _RSeq(tuple(items))

    def _quantified(self, atom: _RNode) -> _RNode:
        c = self._peek()
        if c == "*":
            lo, hi = 0, None
            self.pos += 1
        elif c == "+":
            lo, hi = 1, None
            self.pos += 1
        elif c == "?":
            lo, hi = 0, 1
            self.pos += 1
        elif c == "{" and (bounds := self._braces()) is not None:
            lo, hi = bounds
        else:
            return atom
        if self._peek() == "?":
            self.pos += 1  # lazy: matches the same strings
        if isinstance(atom, _RAnchor):
            self.fail("a quantifier on an anchor")
        if self._peek() in ("*", "+", "?") or (self._peek() == "{" and self._braces(peek=True)):
            self.fail("nothing to repeat")
        if hi is not None and lo > hi:
            self.fail("a quantifier {m,n} with m > n")
        if max(lo, hi or 0) > MAX_LENGTH:
            self.fail(f"a repetition bound above {MAX_LENGTH}")
        return _RRepeat(atom, lo, hi)

    def _braces(self, peek: bool = False) -> tuple[int, int | None] | None:
        """Parse ``{n}``, ``{n,}`` or ``{n,m}`` at the cursor; None if it is a literal '{'."""
        match = re.compile(r"\{(\d*)(,?)(\d*)\}").match(self.src, self.pos)
        if match is None:
            return None
        first, comma, second = match.groups()
        if not first:
            if comma or second:
                # ECMA-262 reads "{,n}" as text, other engines as a quantifier.
                self.fail("an ambiguous '{,n}'; write {0,n} or escape the brace")
            return None
        if not peek:
            self.pos = match.end()
        lo = int(first)
        return lo, (int(second) if second else None) if comma else lo

    def _atom(self) -> _RNode:
        c = self.src[self.pos]
        if c == "(":
            self.pos += 1
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.src.startswith("?<", self.pos) and not self.src.startswith(
                ("?<=", "?<!"), self.pos
            ):
                end = self.src.find(">", self.pos)
                if end < 0:
                    self.fail("an unterminated group name")
                self.pos = end + 1  # a named group matches like a plain one
            elif self._peek() == "?":
                self.fail("lookaround assertions and inline flags")
            node = self._alternation()
            if self._peek() != ")":
                self.fail("a missing ')'")
            self.pos += 1
            return node
        if c == "[":
            return self._class()
        if c == ".":
            self.pos += 1
            return _RChars(subtract(UNIVERSE, _LINE_TERMINATORS))
        if c in "^$":
            self.pos += 1
            return _RAnchor(at_end=c == "$")
        if c == "\\":
            found = self._escape(in_class=False)
            return _RChars(found if isinstance(found, tuple) else ((found, found),))
        if c in "*+?" or (c == "{" and self._braces(peek=True) is not None):
            self.fail("nothing to repeat")
        self.pos += 1
        return _RChars(((self._scalar(ord(c)), self._scalar(ord(c))),))

    def _scalar(self, code: int) -> int:
        if 0xD800 <= code <= 0xDFFF:
            self.fail("an unpaired surrogate")
        return code

    def _class(self) -> _RChars:
        self.pos += 1
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        if self._peek() == "]":
            self.fail("an empty class [] or [^] (engines disagree on it)")
        ranges: list[tuple[int, int]] = []
        while True:
            c = self._peek()
            if c is None:
                self.fail("a missing ']'")
            if c == "]":
                self.pos += 1
                break
            first = self._class_atom()
            if self._peek() == "-" and self._peek(1) not in ("]", None):
                self.pos += 1
                last = self._class_atom()
                if isinstance(first, tuple) or isinstance(last, tuple):
                    self.fail("a range bounded by a class escape")
                if first > last:
                    self.fail("a character range out of order")
                ranges.append((first, last))
            elif isinstance(first, tuple):
                ranges.extend(first)
            else:
                ranges.append((first, first))
        found = intersect(normalize(ranges), UNIVERSE)
        return _RChars(complement(found) if negate else found)

    def _class_atom(self) -> int | Ranges:
        if self._peek() == "\\":
            return self._escape(in_class=True)
        c = self.src[self.pos]
        self.pos += 1
        return self._scalar(ord(c))

    def _escape(self, in_class: bool) -> int | Ranges:
        """The character or set an escape stands for; the cursor is on the backslash."""
        self.pos += 1
        c = self._peek()
        if c is None:
            self.fail("a trailing backslash")
        self.pos += 1
        sets = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
        if c in sets:
            return sets[c]
        if c.lower() in sets:
            return complement(sets[c.lower()])
        if c == "b" and in_class:
            return 0x08
        if c in "bB":
            self.fail("word-boundary assertions")
        if c == "0" and not (self._peek() or "").isdigit():
            return 0
        if c.isdigit():
            self.fail("backreferences and octal escapes")
        simple = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}
        if c in simple:
            return simple[c]
        if c == "c":
            letter = self._peek()
            if letter is None or not (letter.isascii() and letter.isalpha()):
                self.fail("a malformed \\c escape")
            self.pos += 1
            return ord(letter) % 32
        if c == "x":
            return self._hex(2)
        if c == "u":
            if self._peek() == "{":
                self.fail("\\u{...} escapes (they need the u flag)")
            code = self._hex(4)
            if 0xD800 <= code <= 0xDBFF and self.src.startswith("\\u", self.pos):
                saved = self.pos
                self.pos += 2
                low = self._hex(4)
                if 0xDC00 <= low <= 0xDFFF:
                    return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                self.pos = saved
            return self._scalar(code)
        if c in "kpP":
            self.fail(f"\\{c} escapes")
        if c.isascii() and c.isalnum():
            self.fail(f"the unknown escape \\{c}")
        return ord(c)

    def _hex(self, size: int) -> int:
        digits = self.src[self.pos : self.pos + size]
        if len(digits) != size or not all(d in "0123456789abcdefABCDEF" for d in digits):
            self.fail("a malformed hex escape")
        self.pos += size
        return int(digits, 16)


def _nullable(node: _RNode) -> bool:
    if isinstance(node, _RChars):
        return False
    if isinstance(node, _RAnchor):
        return True
    if isinstance(node, _RSeq):
        return all(_nullable(item) for item in node.items)
    if isinstance(node, _RAlt):
        return any(_nullable(option) for option in node.options)
    return node.lo == 0 or _nullable(node.item)


def _has_anchor(node: _RNode) -> bool:
    if isinstance(node, _RAnchor):
        return True
    if isinstance(node, _RSeq):
        return any(_has_anchor(item) for item in node.items)
    if isinstance(node, _RAlt):
        return any(_has_anchor(option) for option in node.options)
    if isinstance(node, _RRepeat):
        return _has_anchor(node.item)
    return False


# ---- conversion to GBNF


def pattern_rule(g: Grammar, pattern: object, name: str) -> str:
    """GBNF for a JSON string matching ``pattern`` anywhere (unless anchored)."""
    if not isinstance(pattern, str):
        raise UnsupportedSchema("pattern", f"must be a string, not {show(pattern)}")
    tree = _RegexParser(pattern).parse()
    branches = tree.options if isinstance(tree, _RAlt) else (tree,)
    alternatives = []
    for branch in branches:
        items = list(branch.items) if isinstance(branch, _RSeq) else [branch]
        anchored_start = bool(items) and items[0] == _RAnchor(at_end=False)
        if anchored_start:
            items.pop(0)
        anchored_end = bool(items) and items[-1] == _RAnchor(at_end=True)
        if anchored_end:
            items.pop()
        middle = _RSeq(tuple(items))
        if _has_anchor(middle):
            raise UnsupportedSchema(
                "pattern", f"'^' and '$' are supported only at the ends, in {pattern!r}"
            )
        anywhere = f"{g.prim('char')}*"  # JSON Schema patterns are unanchored
        alternatives.append(
            seq(
                "" if anchored_start else anywhere,
                _regex(g, middle, pattern),
                "" if anchored_end else anywhere,
            )
        )
    body = " | ".join(alternatives)
    if not body.strip():
        return '"\\"\\""'  # only the empty string
    content = g.helper(f"{name}-pattern", body)
    return f'"\\"" {content} "\\""'


def _regex(g: Grammar, node: _RNode, pattern: str) -> str:
    """GBNF for the JSON string content (escaped as JSON) that ``node`` matches."""
    if isinstance(node, _RChars):
        return _content_chars(g, node.ranges, pattern)
    if isinstance(node, _RSeq):
        parts: list[str] = []
        text = ""  # consecutive single characters become one literal
        for item in node.items:
            if (
                isinstance(item, _RChars)
                and len(item.ranges) == 1
                and item.ranges[0][0] == item.ranges[0][1]
            ):
                text += json_char(item.ranges[0][0])
                continue
            if text:
                parts.append(lit(text))
                text = ""
            parts.append(paren(_regex(g, item, pattern)))
        if text:
            parts.append(lit(text))
        return seq(*parts)
    if isinstance(node, _RAlt):
        return " | ".join(_regex(g, option, pattern) for option in node.options)
    if isinstance(node, _RRepeat):
        if node.hi is None and _nullable(node.item):
            raise UnsupportedSchema(
                "pattern", f"an unbounded repeat of something that can be empty, in {pattern!r}"
            )
        return g.repeat(_regex(g, node.item, pattern), node.lo, node.hi)
    raise UnsupportedSchema(
        "pattern", f"'^' and '$' are supported only at the ends, in {pattern!r}"
    )


def _content_chars(g: Grammar, ranges: Ranges, pattern: str) -> str:
    """One JSON string character from ``ranges``, escaped the way JSON requires."""
    raw = subtract(ranges, JSON_SPECIAL)
    alts = [char_class(raw)] if raw else []
    for lo, hi in intersect(ranges, JSON_SPECIAL):
        alts += [lit(json_char(code)) for code in range(lo, hi + 1)]
    if not alts:
        raise UnsupportedSchema(
            "pattern", f"a character class that matches nothing, in {pattern!r}"
        )
    return alts[0] if len(alts) == 1 else g.helper("pattern-char", " | ".join(alts))
