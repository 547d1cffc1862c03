"""Turn a request's ``format`` into a llama.cpp GBNF grammar.

``grammar_from_format`` is the entry point: ``None``/``""`` mean no grammar,
``"json"`` means any JSON object (Ollama's JSON mode), and a mapping is a JSON
schema handed to ``json_schema_to_grammar``. The grammar's start rule is always
``root``; the runner passes it to ``llama_sampler_init_grammar(vocab, text, "root")``.

Structured output **fails closed**: a schema keyword this converter cannot
enforce raises ``UnsupportedSchema`` naming it. We never emit a grammar that is
looser than the schema, because a client that asked for a schema trusts that the
output validates. The reverse is allowed and used freely: the grammar may accept
*fewer* documents than the schema (fixed property order, bounded digits, no
escapes where a raw character will do), since every document it accepts is
still valid.

Choices a client can notice, all in the "fewer documents" direction:

* Objects emit their declared ``properties`` in declared order. Required ones
  always appear, optional ones may be left out. ``additionalProperties``
  defaults to **false** when ``properties`` is given (as in OpenAI's strict
  mode), so a model cannot pad an object with invented keys; an object schema
  with neither keyword (``{"type": "object"}``) stays a free-form object. Extra
  keys, where allowed, follow the declared ones and never repeat a declared name.
* ``prefixItems`` tuples emit every listed item (up to ``maxItems``) and, unless
  ``items`` says otherwise, nothing after them.
* Without ``type``, the type is inferred from the keywords present
  (``{"minLength": 1}`` produces strings only); ``{}`` is any JSON value.
* ``oneOf`` is accepted only when its alternatives are provably disjoint
  (different types, different constants, or a shared required property with
  disjoint values, as in tagged unions); overlapping alternatives raise, since
  exclusivity cannot be expressed in a grammar.
* ``allOf`` is merged into one schema when the parts combine cleanly
  (intersected types and enums, tightest bounds, union of properties and
  required names); anything else raises.
* ``pattern`` takes the common ECMA-262 subset: literals, escapes, classes,
  ``.``, groups, ``|``, greedy or lazy quantifiers, ``^``/``$`` at the ends.
  Unanchored patterns match anywhere, as JSON Schema says.
* ``format`` supports ``date``, ``time``, ``date-time`` (RFC 3339, real calendar
  days, leap years included) and ``uuid``.
* Numbers carry at most 16 integer digits, 16 fraction digits and a two-digit
  exponent, so a model cannot spin on digits forever; bounded numbers
  (``minimum``/``maximum``/exclusives) are exact decimal ranges without
  exponents and with at most 15 significant digits, which keeps a float parse of
  the output on the right side of an exclusive bound. ``multipleOf`` works for
  integers when it divides 1 and for numbers when it is a power of ten.
* Whitespace between tokens is a single space or a newline plus up to 40
  spaces or tabs, so a model can pretty-print but cannot loop on blanks.
* ``enum``/``const`` values are written as compact JSON, keys in the given order.
  Extra object keys are spelled without escapes. Strings never escape UTF-16
  surrogates (a raw character does the job), which also keeps
  ``minLength`` exact.
* Lengths and repetitions are capped (``MAX_ITEMS``, ``MAX_LENGTH``); larger
  bounds raise instead of being silently dropped.
* Annotations (``title``, ``description``, ``default``, ``examples``, ``$comment``,
  ``x-*`` extensions, ...) are ignored, as are keywords whose value constrains
  nothing (``uniqueItems: false``) and keywords for another type than the one
  being generated (``minimum`` on a string), exactly as a validator would.

The grammar ends right after the value (no trailing whitespace), so once the
value is complete the grammar allows only end-of-generation tokens.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, NoReturn, TypeAlias
from urllib.parse import unquote

from pollama.errors import InvalidFormat, UnsupportedSchema

__all__ = ["MAX_ITEMS", "MAX_LENGTH", "grammar_from_format", "json_schema_to_grammar"]

MAX_ITEMS = 1000
"""Largest minItems/maxItems we expand into a grammar."""
MAX_LENGTH = 10_000
"""Largest minLength/maxLength, and largest pattern quantifier bound."""

_CHUNK = 1000  # llama.cpp turns x{m,n} with n > 2000 into x{m,} silently; stay well below
_INT_DIGITS = 16  # unbounded integers: up to 16 digits (2^53 has 16)
_SIG_DIGITS = 15  # bounded numbers: every decimal with <= 15 digits survives a float parse
_RULE_NAME = re.compile(r"[A-Za-z0-9-]+")

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Keywords that describe or organise a schema without constraining documents.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "$schema",
        "$id",
        "$comment",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",  # OpenAPI hint for oneOf; the alternatives still decide
        "$defs",
        "definitions",
    }
)
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYWORDS = frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems"})
_STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYWORDS = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)
_COMBINATORS = frozenset({"type", "enum", "const", "$ref", "anyOf", "oneOf", "allOf"})
_SUPPORTED = _COMBINATORS | _OBJECT_KEYWORDS | _ARRAY_KEYWORDS | _STRING_KEYWORDS | _NUMBER_KEYWORDS
# Keywords we cannot enforce, but whose value here makes them constrain nothing.
_HARMLESS_VALUES: dict[str, object] = {"uniqueItems": False, "minProperties": 0}
_FORMATS = ("date", "time", "date-time", "uuid")

# Fixed building blocks, defined on first use: name -> (body, rules it uses).
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ws": (r'( " " | "\n" [ \t]{0,40} )?', ()),
    "value": (
        'object | array | string | number | "true" | "false" | "null"',
        ("object", "array", "string", "number"),
    ),
    "object": (r'"{" ws ( member ( "," ws member )* )? "}"', ("ws", "member")),
    "member": ('string ws ":" ws value ws', ("string", "ws", "value")),
    "array": (r'"[" ws ( value ws ( "," ws value ws )* )? "]"', ("ws", "value")),
    "string": (r'"\"" char* "\""', ("char",)),
    # Escapes of UTF-16 surrogates are left out: they would count as two
    # characters against minLength and can decode to unpaired surrogates.
    "char": (r'[^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex4 )', ("hex4",)),
    "hex4": ("[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}", ()),
    "key-char": (r'[^"\\\x00-\x1F]', ()),
    "number": (
        '"-"? int-part ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?',
        ("int-part",),
    ),
    "integer": ('"-"? int-part', ("int-part",)),
    "int-part": ('"0" | [1-9] [0-9]{0,15}', ()),
    "boolean": ('"true" | "false"', ()),
    "null": ('"null"', ()),
    # RFC 3339 dates, with the real number of days per month and Gregorian leap years.
    "date": (
        'year "-" ( month31 "-" day31 | month30 "-" day30 | "02-" day28 ) | leap-year "-02-29"',
        ("year", "month31", "month30", "day28", "day30", "day31", "leap-year"),
    ),
    "year": ('[0-9]{3} [1-9] | [0-9]{2} [1-9] "0" | [0-9] [1-9] "00" | [1-9] "000"', ()),
    "leap-year": (
        '[0-9]{2} ( "0" [48] | [2468] [048] | [13579] [26] )'
        ' | ( "0" [48] | [2468] [048] | [13579] [26] ) "00"',
        (),
    ),
    "month31": ('"0" [13578] | "1" [02]', ()),
    "month30": ('"0" [469] | "11"', ()),
    "day28": ('"0" [1-9] | "1" [0-9] | "2" [0-8]', ()),
    "day30": ('day28 | "29" | "30"', ("day28",)),
    "day31": ('day28 | "29" | "3" [01]', ("day28",)),
    "time": (
        'hour ":" minute ":" minute ( "." [0-9]{1,9} )? ( "Z" | [+-] hour ":" minute )',
        ("hour", "minute"),
    ),
    "hour": ('[01] [0-9] | "2" [0-3]', ()),
    "minute": ("[0-5] [0-9]", ()),
    "date-time": ('date "T" time', ("date", "time")),
    "uuid": (
        '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4}'
        ' "-" [0-9a-fA-F]{12}',
        (),
    ),
}

_ABSENT: Any = object()


def grammar_from_format(fmt: object) -> str:
    """The GBNF grammar for a request's ``format``; ``""`` when output is unconstrained.

    ``None`` and ``""`` give no grammar; ``"json"`` gives any JSON object; a
    mapping is a JSON schema. Anything else raises ``InvalidFormat``.
    """
    if fmt is None or fmt == "":
        return ""
    if fmt == "json":
        grammar = _Grammar()
        return grammar.text(f"{grammar.prim('ws')} {grammar.prim('object')}")
    if isinstance(fmt, Mapping):
        return json_schema_to_grammar(fmt)
    raise InvalidFormat(f'invalid format: {_show(fmt)}; expected "json" or a JSON schema object')


def json_schema_to_grammar(schema: Mapping[str, Any]) -> str:
    """The GBNF grammar (start rule ``root``) for documents valid against ``schema``.

    Raises ``UnsupportedSchema`` naming the keyword when part of the schema
    cannot be enforced, and ``InvalidFormat`` when the schema is malformed.
    """
    if not isinstance(schema, Mapping):
        raise InvalidFormat(f"invalid format: {_show(schema)}; a JSON schema must be an object")
    converter = _Converter(schema)
    try:
        top = converter.rule(schema, "schema")
    except RecursionError:
        raise InvalidFormat("invalid format: the JSON schema is nested too deeply") from None
    return converter.grammar.text(f"{converter.grammar.prim('ws')} {top}")


# ---- grammar text


class _Grammar:
    """Named GBNF rules under construction; helper rules with equal bodies are shared."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._taken: set[str] = {"root", *_PRIMITIVES}
        self._helpers: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        """A rule name not used yet; GBNF names allow only letters, digits and '-'."""
        base = "-".join(re.findall(r"[A-Za-z0-9]+", hint))[:40] or "r"
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}-{n}"
        self._taken.add(name)
        return name

    def define(self, name: str, body: str) -> None:
        self.rules[name] = body

    def helper(self, hint: str, body: str) -> str:
        """The name of a rule with this body, defining it under a fresh name if new."""
        name = self._helpers.get(body)
        if name is None:
            name = self.fresh(hint)
            self.rules[name] = body
            self._helpers[body] = name
        return name

    def prim(self, name: str) -> str:
        """The name of a fixed building block, defining it (and what it uses) on first use."""
        if name not in self.rules:
            body, uses = _PRIMITIVES[name]
            self.rules[name] = body
            for dep in uses:
                self.prim(dep)
        return name

    def text(self, root_body: str) -> str:
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"


def _lit(text: str) -> str:
    """A GBNF string literal matching exactly ``text``; non-ASCII goes in as escapes."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(_escape_code(ord(ch)))
    out.append('"')
    return "".join(out)


def _escape_code(code: int) -> str:
    if code < 0x80:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def _class_char(code: int) -> str:
    # Only ASCII letters and digits go in raw: '-', ']', '^' and '\' would mean something.
    ch = chr(code)
    return ch if ch.isascii() and ch.isalnum() else _escape_code(code)


def _seq(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _paren(body: str) -> str:
    """``body`` made safe to place inside a sequence."""
    return f"( {body} )" if "|" in body else body


def _quantified(atom: str, lo: int, hi: int | None) -> str:
    """GBNF for ``atom`` repeated lo..hi times; both bounds at most _CHUNK."""
    if hi is None:
        return {0: f"{atom}*", 1: f"{atom}+"}.get(lo, f"{atom}{{{lo},}}")
    if hi == 0:
        return ""
    if lo == hi:
        return atom if lo == 1 else f"{atom}{{{lo}}}"
    return f"{atom}?" if (lo, hi) == (0, 1) else f"{atom}{{{lo},{hi}}}"


def _is_atom(expr: str) -> bool:
    """Whether a quantifier placed after ``expr`` applies to all of it."""
    if _RULE_NAME.fullmatch(expr):
        return True
    if expr.startswith("[") and expr.endswith("]") and " " not in expr:
        return True
    return re.fullmatch(r'"(?:[^"\\]|\\.)*"', expr) is not None


# ---- code point sets

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
_DIGIT: _Ranges = ((0x30, 0x39),)
_WORD: _Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: _Ranges = _normalize(
    [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)]
    + [(0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
)
_LINE_TERMINATORS: _Ranges = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
_KEY_CHARS: _Ranges = _subtract(_UNIVERSE, _JSON_SPECIAL)


def _json_char(code: int) -> str:
    """How a JSON string spells the character ``code`` (the escaped form where one is needed)."""
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code < 0x20 or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return chr(code)


# ---- JSON values


def _show(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_text(value: object, keyword: str) -> str:
    """Compact JSON for a literal value, as the grammar will spell it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsupportedSchema(keyword, f"{value!r} is not a JSON number")
        return json.dumps(value)
    if isinstance(value, str):
        return '"' + "".join(_json_char(ord(c)) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v, keyword) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidFormat(f"invalid format: {keyword} has a non-string key {k!r}")
            items.append(f"{_json_text(k, keyword)}:{_json_text(v, keyword)}")
        return "{" + ",".join(items) + "}"
    raise InvalidFormat(f"invalid format: {keyword} holds {value!r}, which is not JSON")


def _json_eq(a: object, b: object) -> bool:
    """JSON Schema equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    return False


def _json_types(value: object) -> set[str]:
    """The JSON Schema types ``value`` is an instance of."""
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"integer", "number"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list | tuple):
        return {"array"}
    return {"object"}


def _types_overlap(a: set[str], b: set[str]) -> bool:
    widen = {"integer": {"integer", "number"}, "number": {"integer", "number"}}
    return any(widen.get(t, {t}) & b for t in a)


def _canonical(schema: object) -> str:
    try:
        return json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidFormat(
            f"invalid format: the JSON schema holds a non-JSON value ({exc})"
        ) from None


def _constraining(schema: Mapping[str, Any]) -> list[str]:
    return [k for k in schema if k not in _ANNOTATIONS and not k.startswith("x-")]


def _count(schema: Mapping[str, Any], keyword: str, cap: int) -> int | None:
    """A non-negative integer keyword such as minItems, or None when absent."""
    if keyword not in schema:
        return None
    value = schema[keyword]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsupportedSchema(keyword, f"must be a non-negative integer, not {_show(value)}")
    if value > cap:
        raise UnsupportedSchema(keyword, f"{value} is more than the supported {cap}")
    return value


def _decimal(value: object, keyword: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedSchema(keyword, f"must be a number, not {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsupportedSchema(keyword, f"{value!r} is not a JSON number")
    # repr() is the shortest text that reads back as this float: the number as written.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _as_list(value: object, keyword: str) -> list[Any]:
    if not isinstance(value, list | tuple) or not value:
        raise UnsupportedSchema(keyword, f"must be a non-empty array, not {_show(value)}")
    return list(value)


# ---- numbers


@dataclass(frozen=True)
class _Bound:
    value: Decimal
    inclusive: bool


def _bounds(schema: Mapping[str, Any]) -> tuple[_Bound | None, _Bound | None]:
    """The tightest lower and upper bound among minimum, maximum and the exclusives."""
    lower: _Bound | None = None
    upper: _Bound | None = None

    def tighter(old: _Bound | None, new: _Bound, is_lower: bool) -> _Bound:
        if old is None:
            return new
        if new.value != old.value:
            return new if (new.value > old.value) == is_lower else old
        return new if not new.inclusive else old

    for keyword, exclusive_key, is_lower in (
        ("minimum", "exclusiveMinimum", True),
        ("maximum", "exclusiveMaximum", False),
    ):
        exclusive = schema.get(exclusive_key)
        draft4 = isinstance(exclusive, bool)  # draft 4: a flag on minimum/maximum
        if keyword in schema:
            bound = _Bound(_decimal(schema[keyword], keyword), not (draft4 and exclusive))
            if is_lower:
                lower = tighter(lower, bound, True)
            else:
                upper = tighter(upper, bound, False)
        if exclusive is not None and not draft4:
            bound = _Bound(_decimal(exclusive, exclusive_key), False)
            if is_lower:
                lower = tighter(lower, bound, True)
            else:
                upper = tighter(upper, bound, False)
    return lower, upper


def _split_decimal(value: Decimal) -> tuple[int, str]:
    """Integer part and fraction digits (no trailing zeros) of a non-negative decimal."""
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


def _zero_fraction_ok(
    low: str | None, low_strict: bool, high: str | None, high_strict: bool
) -> bool:
    """Whether ending the fraction here (the rest all zeros) respects both bounds."""
    if low is not None:
        if low.strip("0"):
            return False
        if low_strict:
            return False
    if high is not None and not high.strip("0") and high_strict:
        return False
    return True


# ---- regular expressions


@dataclass(frozen=True)
class _RChars:
    ranges: _Ranges


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
            return _RChars(_subtract(_UNIVERSE, _LINE_TERMINATORS))
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
        found = _intersect(_normalize(ranges), _UNIVERSE)
        return _RChars(_complement(found) if negate else found)

    def _class_atom(self) -> int | _Ranges:
        if self._peek() == "\\":
            return self._escape(in_class=True)
        c = self.src[self.pos]
        self.pos += 1
        return self._scalar(ord(c))

    def _escape(self, in_class: bool) -> int | _Ranges:
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
            return _complement(sets[c.lower()])
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


# ---- the converter


class _Converter:
    """Walks one JSON schema and builds its grammar."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.grammar = _Grammar()
        self._rules: dict[str, str] = {}  # canonical schema text -> rule name
        # Schemas being converted since the last '{' or '['; meeting one of them
        # again would be left recursion, which llama.cpp rejects.
        self._unguarded: list[set[str]] = [set()]
        self._fractions: dict[tuple[str | None, bool, str | None, bool, int], str | None] = {}

    # -- dispatch

    def rule(self, schema: object, hint: str) -> str:
        """The name of a rule (or a building block) matching ``schema``."""
        if schema is True:
            return self.grammar.prim("value")
        if schema is False:
            raise UnsupportedSchema("false", "the schema `false` matches no value")
        if not isinstance(schema, Mapping):
            raise InvalidFormat(f"invalid format: expected a schema object, got {_show(schema)}")
        self._check_keywords(schema)
        if not _constraining(schema):
            return self.grammar.prim("value")
        key = _canonical(schema)
        if key in self._rules:
            if key in self._unguarded[-1]:
                raise UnsupportedSchema(
                    "$ref", "a schema that refers to itself without an object or array in between"
                )
            return self._rules[key]
        name = self.grammar.fresh(hint)
        self._rules[key] = name
        self._unguarded[-1].add(key)
        try:
            body = self._body(schema, name)
        finally:
            self._unguarded[-1].discard(key)
        self.grammar.define(name, body)
        return name

    @contextmanager
    def _nested(self) -> Iterator[None]:
        """Children of an object or array: they come after a '{' or '[', so recursion is fine."""
        self._unguarded.append(set())
        try:
            yield
        finally:
            self._unguarded.pop()

    def _check_keywords(self, schema: Mapping[str, Any]) -> None:
        for key, value in schema.items():
            if not isinstance(key, str):
                raise InvalidFormat(f"invalid format: schema key {key!r} is not a string")
            if key in _SUPPORTED or key in _ANNOTATIONS or key.startswith("x-"):
                continue
            if key in _HARMLESS_VALUES and _json_eq(value, _HARMLESS_VALUES[key]):
                continue
            raise UnsupportedSchema(key, "no grammar enforces it, so the schema is refused")

    def _body(self, schema: Mapping[str, Any], name: str) -> str:
        def rest_without(keyword: str) -> dict[str, Any]:
            return {k: v for k, v in schema.items() if k != keyword and k not in _ANNOTATIONS}

        if "$ref" in schema:
            ref = schema["$ref"]
            rest = rest_without("$ref")
            if not _constraining(rest):
                return self.rule(self._resolve(ref), _ref_hint(ref))
            return self.rule(self._merge([{"$ref": ref}, rest]), name)
        if "allOf" in schema:
            parts = _as_list(schema["allOf"], "allOf")
            return self.rule(self._merge([rest_without("allOf"), *parts]), name)
        for keyword in ("oneOf", "anyOf"):
            if keyword in schema:
                options = [o for o in _as_list(schema[keyword], keyword) if o is not False]
                if not options:
                    raise UnsupportedSchema(keyword, "every alternative is `false`")
                rest = rest_without(keyword)
                if _constraining(rest):
                    options = [self._merge([rest, option]) for option in options]
                if keyword == "oneOf":
                    self._check_disjoint(options)
                rules = [self.rule(option, f"{name}-{i}") for i, option in enumerate(options)]
                return " | ".join(dict.fromkeys(rules))
        if "enum" in schema or "const" in schema:
            return self._literals(schema)
        branches = [self._typed(t, schema, name) for t in self._types(schema)]
        if len(branches) == 1:
            return branches[0]
        return " | ".join(_paren(branch) for branch in branches)

    def _types(self, schema: Mapping[str, Any]) -> list[str]:
        declared = schema.get("type", _ABSENT)
        if declared is _ABSENT:
            keys = schema.keys()
            families = (
                ("object", _OBJECT_KEYWORDS),
                ("array", _ARRAY_KEYWORDS),
                ("string", _STRING_KEYWORDS),
                ("number", _NUMBER_KEYWORDS),
            )
            types = [t for t, words in families if keys & words] or list(_TYPES)
        elif isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list | tuple) and declared:
            types = list(declared)
        else:
            raise UnsupportedSchema(
                "type", f"must be a type name or a list of them: {_show(declared)}"
            )
        for t in types:
            if t not in _TYPES:
                raise UnsupportedSchema("type", f"unknown type {_show(t)}")
        if "number" in types and "integer" in types:
            types.remove("integer")  # every integer is a number
        return list(dict.fromkeys(types))

    def _typed(self, type_name: str, schema: Mapping[str, Any], name: str) -> str:
        if type_name == "null":
            return self.grammar.prim("null")
        if type_name == "boolean":
            return self.grammar.prim("boolean")
        if type_name == "string":
            return self._string(schema, name)
        if type_name in ("integer", "number"):
            return self._number(schema, integer=type_name == "integer")
        if type_name == "object":
            return self._object(schema, name)
        return self._array(schema, name)

    # -- references and combinations

    def _resolve(self, ref: object) -> object:
        """The schema a local ``$ref`` (a JSON pointer after '#') points to."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise UnsupportedSchema(
                "$ref", f"only references within the schema are supported: {_show(ref)}"
            )
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise UnsupportedSchema("$ref", f"anchor references are not supported: {ref!r}")
        node: object = self.root
        for raw in pointer.split("/")[1:] if pointer else []:
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise UnsupportedSchema("$ref", f"{ref!r} does not point into the schema")
        return node

    def _merge(self, parts: Sequence[object]) -> dict[str, Any]:
        """One schema equivalent to all of ``parts`` together (allOf), or UnsupportedSchema."""
        flat: list[Mapping[str, Any]] = []

        def add(part: object, refs: frozenset[str]) -> None:
            if part is True:
                return
            if part is False:
                raise UnsupportedSchema("allOf", "a part is `false`, so no value matches")
            if not isinstance(part, Mapping):
                raise InvalidFormat(f"invalid format: expected a schema object, got {_show(part)}")
            self._check_keywords(part)
            rest = dict(part)
            if "$ref" in rest:
                ref = rest.pop("$ref")
                if not isinstance(ref, str) or ref in refs:
                    raise UnsupportedSchema("$ref", f"a reference cycle through {_show(ref)}")
                add(self._resolve(ref), refs | {ref})
            for sub in _as_list(rest.pop("allOf"), "allOf") if "allOf" in rest else []:
                add(sub, refs)
            flat.append(rest)

        for part in parts:
            add(part, frozenset())
        merged: dict[str, Any] = {}
        for part in flat:
            for key, value in part.items():
                if key in _ANNOTATIONS or key.startswith("x-"):
                    continue
                merged[key] = self._combine(key, merged[key], value) if key in merged else value
        self._close_objects(flat, merged)
        return merged

    def _combine(self, key: str, a: Any, b: Any) -> Any:
        if _json_eq(a, b):
            return a
        if key == "type":
            left, right = _type_set(a), _type_set(b)
            both = left & right
            if {"integer", "number"} & left and {"integer", "number"} & right:
                both |= {"integer"} if "number" not in both else set()
            if not both:
                raise UnsupportedSchema("allOf", "the parts have no type in common")
            return [t for t in _TYPES if t in both]
        exclusive_flags = isinstance(a, bool) or isinstance(b, bool)
        if key in ("minLength", "minItems", "minimum", "exclusiveMinimum") and not exclusive_flags:
            return max(a, b, key=lambda v: _decimal(v, key))
        if key in ("maxLength", "maxItems", "maximum", "exclusiveMaximum") and not exclusive_flags:
            return min(a, b, key=lambda v: _decimal(v, key))
        if key == "required" and isinstance(a, list) and isinstance(b, list):
            return list(dict.fromkeys([*a, *b]))
        if key == "properties" and isinstance(a, Mapping) and isinstance(b, Mapping):
            out = dict(a)
            for name, sub in b.items():
                out[name] = {"allOf": [out[name], sub]} if name in out else sub
            return out
        if key == "items" and not isinstance(a, list) and not isinstance(b, list):
            return {"allOf": [a, b]}
        if key == "additionalProperties" and isinstance(a, bool) and isinstance(b, bool):
            return a and b
        if key == "enum" and isinstance(a, list) and isinstance(b, list):
            return [v for v in a if any(_json_eq(v, w) for w in b)]
        if key in ("anyOf", "oneOf"):
            options = [{"allOf": [x, y]} for x in _as_list(a, key) for y in _as_list(b, key)]
            if len(options) > 64:
                raise UnsupportedSchema("allOf", f"combining two {key} lists gives too many cases")
            return options
        raise UnsupportedSchema("allOf", f"cannot combine two different {key!r} values")

    def _close_objects(self, parts: list[Mapping[str, Any]], merged: dict[str, Any]) -> None:
        """Apply each part's own additionalProperties to the properties other parts add."""
        names = set(merged.get("properties", {})) | set(merged.get("required", []))
        for part in parts:
            extra = part.get("additionalProperties", True)
            if extra is True:
                continue
            foreign = sorted(names - set(part.get("properties", {})))
            if not foreign:
                continue
            if extra is False:
                raise UnsupportedSchema(
                    "allOf", f"one part forbids the properties {foreign} that another adds"
                )
            props = dict(merged.get("properties", {}))
            for foreign_name in foreign:
                props[foreign_name] = {"allOf": [props.get(foreign_name, True), extra]}
            merged["properties"] = props

    def _check_disjoint(self, options: list[Any]) -> None:
        for i, a in enumerate(options):
            for b in options[i + 1 :]:
                if not self._disjoint(a, b):
                    raise UnsupportedSchema(
                        "oneOf",
                        "its alternatives may overlap and a grammar cannot make them exclusive; "
                        "use anyOf if matching several is fine",
                    )

    def _disjoint(self, a: object, b: object) -> bool:
        """True only when no JSON value can be valid against both schemas."""
        if not isinstance(a, Mapping) or not isinstance(b, Mapping):
            return False
        if "$ref" in a or "allOf" in a:
            return self._disjoint(self._merge([a]), b)
        if "$ref" in b or "allOf" in b:
            return self._disjoint(a, self._merge([b]))
        lits_a, lits_b = _literal_values(a), _literal_values(b)
        if lits_a is not None and lits_b is not None:
            return not any(_json_eq(x, y) for x in lits_a for y in lits_b)
        types_a, types_b = _declared_types(a, lits_a), _declared_types(b, lits_b)
        if types_a is None or types_b is None:
            return False
        if not _types_overlap(types_a, types_b):
            return True
        if types_a <= {"object"} and types_b <= {"object"}:
            props_a, props_b = a.get("properties", {}), b.get("properties", {})
            shared = set(a.get("required", [])) & set(b.get("required", []))
            return any(
                self._disjoint(props_a[k], props_b[k])
                for k in shared
                if k in props_a and k in props_b
            )
        return False

    # -- literals

    def _literals(self, schema: Mapping[str, Any]) -> str:
        values = _literal_values(schema)
        assert values is not None
        keyword = "enum" if "enum" in schema else "const"
        others = [k for k in _constraining(schema) if k not in ("enum", "const", "type")]
        if others:
            raise UnsupportedSchema(others[0], "cannot be combined with enum or const")
        if "type" in schema:
            allowed = set(self._types(schema))
            values = [v for v in values if _types_overlap(_json_types(v), allowed)]
        texts = list(dict.fromkeys(_json_text(v, keyword) for v in values))
        if not texts:
            raise UnsupportedSchema(keyword, "no listed value satisfies the rest of the schema")
        return " | ".join(_lit(text) for text in texts)

    # -- objects

    def _object(self, schema: Mapping[str, Any], name: str) -> str:
        g = self.grammar
        props = schema.get("properties", {})
        if not isinstance(props, Mapping):
            raise UnsupportedSchema("properties", "must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list | tuple) or not all(isinstance(r, str) for r in required):
            raise UnsupportedSchema("required", "must be an array of property names")
        extra = schema.get("additionalProperties", "properties" not in schema)
        if not isinstance(extra, bool | Mapping):
            raise UnsupportedSchema("additionalProperties", "must be a boolean or a schema")

        declared: list[tuple[str, object, bool]] = []
        for key, sub in props.items():
            if sub is False:
                if key in required:
                    raise UnsupportedSchema(
                        "required", f"{key!r} is required but its schema is false"
                    )
                continue
            declared.append((key, sub, key in required))
        for key in dict.fromkeys(required):
            if key not in props:
                if extra is False:
                    raise UnsupportedSchema(
                        "required",
                        f"{key!r} is required but not among the properties, "
                        "and additional properties are not allowed",
                    )
                declared.append((key, extra, True))

        with self._nested():
            pairs = []
            for key, sub, is_required in declared:
                value = self.rule(sub, f"{name}-{key}")
                kv = g.helper(
                    f"{name}-{key}-kv",
                    f'{_lit(_json_text(key, "properties"))} ws ":" ws {value} ws',
                )
                pairs.append((kv, is_required))
            extra_kv = ""
            if extra is not False:
                value = self.rule(extra, f"{name}-value")
                key_rule = self._key_except([key for key, _, _ in declared], name)
                extra_kv = g.helper(f"{name}-extra-kv", f'{key_rule} ws ":" ws {value} ws')
        g.prim("ws")

        # Build from the back: after[i] follows once something was written (so it
        # starts with a comma), first[i] starts the object at property i.
        after = g.helper(f"{name}-more", f'( "," ws {extra_kv} )*') if extra_kv else ""
        first = g.helper(f"{name}-extras", f"( {extra_kv} {after} )?") if extra_kv else ""
        for i in range(len(pairs) - 1, -1, -1):
            kv, is_required = pairs[i]
            start = _seq(kv, after)
            if is_required:
                first_body = start
            elif first:
                first_body = f"{start} | {first}"
            else:
                first_body = f"( {start} )?"
            first = g.helper(f"{name}-from-{i}", first_body)
            if i > 0:
                step = f'"," ws {kv}' if is_required else f'( "," ws {kv} )?'
                after = g.helper(f"{name}-after-{i}", _seq(step, after))
        return _seq('"{" ws', first, '"}"')

    def _key_except(self, names: list[str], hint: str) -> str:
        """A JSON string that is none of ``names`` (keys spelled without escapes)."""
        g = self.grammar
        trie: dict[str, Any] = {}
        for key in names:
            if _intersect(_chars(key), _JSON_SPECIAL) or any(
                0xD800 <= ord(c) <= 0xDFFF for c in key
            ):
                continue  # a raw-only key can never spell this name
            node = trie
            for ch in key:
                node = node.setdefault(ch, {})
            node[""] = {}
        if not trie:
            return g.prim("string")

        def not_in(node: dict[str, Any]) -> str:
            children = sorted(c for c in node if c)
            others = _subtract(_KEY_CHARS, _chars("".join(children)))
            alts = [f"{_class(others)} key-char*"] if others else []
            alts += [f"{_lit(c)} {not_in(node[c])}" for c in children]
            body = " | ".join(alts)
            if "" not in node:
                body = f"( {body} )?" if body else ""
            return g.helper(f"{hint}-key", body)

        g.prim("key-char")
        return f'"\\"" {not_in(trie)} "\\""'

    # -- arrays

    def _array(self, schema: Mapping[str, Any], name: str) -> str:
        g = self.grammar
        items = schema.get("items", _ABSENT)
        prefix = schema.get("prefixItems", [])
        if isinstance(items, list | tuple):  # draft 4-2019 tuple form
            if "prefixItems" in schema:
                raise UnsupportedSchema("items", "an array of schemas together with prefixItems")
            prefix, items = items, schema.get("additionalItems", _ABSENT)
        if not isinstance(prefix, list | tuple):
            raise UnsupportedSchema("prefixItems", "must be an array of schemas")
        if items is _ABSENT:
            rest: object = None if prefix else True  # tuples stay tuples
        else:
            rest = None if items is False else items
        lo = _count(schema, "minItems", MAX_ITEMS) or 0
        hi = _count(schema, "maxItems", MAX_ITEMS)
        if hi is not None and lo > hi:
            raise UnsupportedSchema("minItems", "is greater than maxItems")
        fixed = list(prefix) if hi is None else list(prefix)[:hi]
        if any(p is False for p in fixed):
            raise UnsupportedSchema("prefixItems", "an item schema is false")
        more_lo = max(0, lo - len(fixed))
        more_hi = None if hi is None else hi - len(fixed)
        if rest is None:
            if more_lo:
                raise UnsupportedSchema("minItems", "asks for more items than prefixItems allows")
            more_hi = 0

        with self._nested():
            fixed_rules = [self.rule(p, f"{name}-{i}") for i, p in enumerate(fixed)]
            item = self.rule(rest, f"{name}-item") if rest is not None and more_hi != 0 else ""
        g.prim("ws")
        parts = [f"{r} ws" if i == 0 else f'"," ws {r} ws' for i, r in enumerate(fixed_rules)]
        if item:
            following = g.helper(f"{name}-next", f'"," ws {item} ws')
            if fixed_rules:
                parts.append(self._repeat(following, more_lo, more_hi))
            else:
                tail_hi = None if more_hi is None else more_hi - 1
                run = _seq(f"{item} ws", self._repeat(following, max(0, more_lo - 1), tail_hi))
                parts.append(run if more_lo else f"( {run} )?")
        return _seq('"[" ws', *parts, '"]"')

    def _repeat(self, atom: str, lo: int, hi: int | None) -> str:
        """``atom`` repeated lo..hi times (hi None: unbounded), in pieces llama.cpp keeps exact."""
        if not _is_atom(atom):
            atom = self.grammar.helper("item", atom)
        if hi == 0:
            return ""
        head: list[str] = []
        if lo > _CHUNK:
            whole, lo = divmod(lo, _CHUNK)
            head = [self.grammar.helper("chunk", f"{atom}{{{_CHUNK}}}")] * whole
            hi = None if hi is None else hi - whole * _CHUNK
        if hi is not None and hi > _CHUNK:
            return _seq(*head, _quantified(atom, lo, lo), self._up_to(atom, hi - lo))
        return _seq(*head, _quantified(atom, lo, hi))

    def _up_to(self, atom: str, n: int) -> str:
        """0..n copies of ``atom``: a full chunk and then the rest, or fewer than a chunk."""
        if n <= _CHUNK:
            return _quantified(atom, 0, n)
        chunk = self.grammar.helper("chunk", f"{atom}{{{_CHUNK}}}")
        rest = self._up_to(atom, n - _CHUNK)
        return self.grammar.helper("up-to", f"{chunk} {rest} | {atom}{{0,{_CHUNK - 1}}}")

    # -- strings

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        g = self.grammar
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
            return self._pattern(pattern, name)
        if fmt is not None:
            if fmt not in _FORMATS:
                raise UnsupportedSchema("format", f"{_show(fmt)}; supported: {', '.join(_FORMATS)}")
            for keyword in ("minLength", "maxLength"):
                if keyword in schema and not (keyword == "minLength" and lo == 0):
                    raise UnsupportedSchema(keyword, "cannot be combined with format")
            return f'"\\"" {g.prim(fmt)} "\\""'
        if lo == 0 and hi is None:
            return g.prim("string")
        return _seq('"\\""', self._repeat(g.prim("char"), lo, hi), '"\\""')

    def _pattern(self, pattern: object, name: str) -> str:
        if not isinstance(pattern, str):
            raise UnsupportedSchema("pattern", f"must be a string, not {_show(pattern)}")
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
            anywhere = f"{self.grammar.prim('char')}*"  # JSON Schema patterns are unanchored
            alternatives.append(
                _seq(
                    "" if anchored_start else anywhere,
                    self._regex(middle, pattern),
                    "" if anchored_end else anywhere,
                )
            )
        body = " | ".join(alternatives)
        if not body.strip():
            return '"\\"\\""'  # only the empty string
        content = self.grammar.helper(f"{name}-pattern", body)
        return f'"\\"" {content} "\\""'

    def _regex(self, node: _RNode, pattern: str) -> str:
        """GBNF for the JSON string content (escaped as JSON) that ``node`` matches."""
        if isinstance(node, _RChars):
            return self._content_chars(node.ranges, pattern)
        if isinstance(node, _RSeq):
            parts: list[str] = []
            text = ""  # consecutive single characters become one literal
            for item in node.items:
                if (
                    isinstance(item, _RChars)
                    and len(item.ranges) == 1
                    and item.ranges[0][0] == item.ranges[0][1]
                ):
                    text += _json_char(item.ranges[0][0])
                    continue
                if text:
                    parts.append(_lit(text))
                    text = ""
                parts.append(_paren(self._regex(item, pattern)))
            if text:
                parts.append(_lit(text))
            return _seq(*parts)
        if isinstance(node, _RAlt):
            return " | ".join(self._regex(option, pattern) for option in node.options)
        if isinstance(node, _RRepeat):
            if node.hi is None and _nullable(node.item):
                raise UnsupportedSchema(
                    "pattern", f"an unbounded repeat of something that can be empty, in {pattern!r}"
                )
            return self._repeat(self._regex(node.item, pattern), node.lo, node.hi)
        raise UnsupportedSchema(
            "pattern", f"'^' and '$' are supported only at the ends, in {pattern!r}"
        )

    def _content_chars(self, ranges: _Ranges, pattern: str) -> str:
        """One JSON string character from ``ranges``, escaped the way JSON requires."""
        raw = _subtract(ranges, _JSON_SPECIAL)
        alts = [_class(raw)] if raw else []
        for lo, hi in _intersect(ranges, _JSON_SPECIAL):
            alts += [_lit(_json_char(code)) for code in range(lo, hi + 1)]
        if not alts:
            raise UnsupportedSchema(
                "pattern", f"a character class that matches nothing, in {pattern!r}"
            )
        return alts[0] if len(alts) == 1 else self.grammar.helper("pattern-char", " | ".join(alts))

    # -- numbers

    def _number(self, schema: Mapping[str, Any], integer: bool) -> str:
        g = self.grammar
        lower, upper = _bounds(schema)
        fraction_digits: int | None = None  # None: as many as significance allows
        if "multipleOf" in schema:
            step = _decimal(schema["multipleOf"], "multipleOf")
            if step <= 0:
                raise UnsupportedSchema("multipleOf", "must be greater than 0")
            if integer:
                if Decimal(1) % step != 0:
                    raise UnsupportedSchema(
                        "multipleOf", "only values that divide 1 are supported for integers"
                    )
            else:
                _, digits, exponent = step.normalize().as_tuple()
                if digits != (1,) or not isinstance(exponent, int) or exponent > 0:
                    raise UnsupportedSchema(
                        "multipleOf", "only 1, 0.1, 0.01, ... are supported for numbers"
                    )
                fraction_digits = -exponent
                integer = fraction_digits == 0
        if lower is None and upper is None and (integer or fraction_digits is None):
            return g.prim("integer" if integer else "number")
        if integer:
            return self._integer_range(lower, upper)
        return self._decimal_range(lower, upper, fraction_digits)

    def _integer_range(self, lower: _Bound | None, upper: _Bound | None) -> str:
        lo = hi = None
        if lower is not None:
            lo = int(lower.value.to_integral_value(ROUND_CEILING))
            lo += 1 if not lower.inclusive and lo == lower.value else 0
        if upper is not None:
            hi = int(upper.value.to_integral_value(ROUND_FLOOR))
            hi -= 1 if not upper.inclusive and hi == upper.value else 0
        if lo is not None and hi is not None and lo > hi:
            raise UnsupportedSchema("minimum", "no integer lies within the bounds")
        alts = []
        if hi is None or hi >= 0:
            alts += [e for _, e in self._whole(max(lo or 0, 0), hi, _INT_DIGITS)]
        if lo is None or lo < 0:
            start = 1 if hi is None or hi >= 0 else -hi
            negative = [e for _, e in self._whole(start, None if lo is None else -lo, _INT_DIGITS)]
            if negative:
                alts.append(f'"-" {_paren(" | ".join(negative))}')
        if not alts:
            raise UnsupportedSchema("minimum", f"no integer of at most {_INT_DIGITS} digits fits")
        return " | ".join(alts)

    def _decimal_range(
        self, lower: _Bound | None, upper: _Bound | None, fraction_digits: int | None
    ) -> str:
        alts = []
        if upper is None or upper.value > 0 or (upper.value == 0 and upper.inclusive):
            if lower is None or lower.value < 0:
                start = _Bound(Decimal(0), True)
            else:
                start = lower
            alts += self._magnitude(start, upper, fraction_digits)
        if lower is None or lower.value < 0:
            # x < 0: write "-" and a magnitude m = -x > 0 with the bounds mirrored.
            if upper is not None and upper.value < 0:
                m_lower = _Bound(-upper.value, upper.inclusive)
            else:
                m_lower = _Bound(Decimal(0), False)
            m_upper = None if lower is None else _Bound(-lower.value, lower.inclusive)
            negative = self._magnitude(m_lower, m_upper, fraction_digits)
            if negative:
                alts.append(f'"-" {_paren(" | ".join(negative))}')
        if not alts:
            raise UnsupportedSchema("minimum", "no number lies within the bounds")
        return " | ".join(alts)

    def _magnitude(
        self, lower: _Bound, upper: _Bound | None, fraction_digits: int | None
    ) -> list[str]:
        """Non-negative decimals (no exponent) between the bounds, as alternatives."""
        if upper is not None and (
            lower.value > upper.value
            or (lower.value == upper.value and not (lower.inclusive and upper.inclusive))
        ):
            return []
        low_int, low_frac = _split_decimal(lower.value)
        if len(str(low_int)) > _SIG_DIGITS:
            return []

        def frac_room(int_len: int) -> int:
            room = max(0, _SIG_DIGITS - int_len)
            return room if fraction_digits is None else min(room, fraction_digits)

        def with_fraction(
            int_expr: str,
            int_len: int,
            low: str | None,
            low_strict: bool,
            high: str | None,
            high_strict: bool,
        ) -> str | None:
            ends, more = self._fraction(low, low_strict, high, high_strict, frac_room(int_len))
            if more and ends:
                return f'{int_expr} ( "." {more} )?'
            if more:
                return f'{int_expr} "." {more}'
            return int_expr if ends else None

        alts: list[str | None] = []
        if upper is not None:
            high_int, high_frac = _split_decimal(upper.value)
        if upper is not None and low_int == high_int:
            alts.append(
                with_fraction(
                    _lit(str(low_int)),
                    len(str(low_int)),
                    low_frac,
                    not lower.inclusive,
                    high_frac,
                    not upper.inclusive,
                )
            )
        else:
            alts.append(
                with_fraction(
                    _lit(str(low_int)),
                    len(str(low_int)),
                    low_frac,
                    not lower.inclusive,
                    None,
                    False,
                )
            )
            middle_hi = None if upper is None else high_int - 1
            for length, expr in self._whole(low_int + 1, middle_hi, _SIG_DIGITS):
                alts.append(with_fraction(expr, length, None, False, None, False))
            if upper is not None and len(str(high_int)) <= _SIG_DIGITS:
                alts.append(
                    with_fraction(
                        _lit(str(high_int)),
                        len(str(high_int)),
                        None,
                        False,
                        high_frac,
                        not upper.inclusive,
                    )
                )
        return [a for a in alts if a]

    def _fraction(
        self, low: str | None, low_strict: bool, high: str | None, high_strict: bool, room: int
    ) -> tuple[bool, str | None]:
        """Fraction digits (at most ``room``) keeping 0.digits within 0.low and 0.high.

        Returns whether the fraction may end here, and a rule for one or more
        further digits (None if none may follow). ``low``/``high`` None means
        that side is already decided; digits past their end count as zeros.
        """
        ends = _zero_fraction_ok(low, low_strict, high, high_strict)
        if room == 0:
            return ends, None
        key = (low, low_strict, high, high_strict, room)
        if key in self._fractions:
            return ends, self._fractions[key]
        if low is None and high is None:
            self._fractions[key] = f"[0-9]{{1,{room}}}"
            return ends, self._fractions[key]
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for digit in range(10):
            next_low: str | None = None
            if low is not None:
                bound = int(low[0]) if low else 0
                if digit < bound:
                    continue
                next_low = low[1:] if digit == bound else None
            next_high: str | None = None
            if high is not None:
                bound = int(high[0]) if high else 0
                if digit > bound:
                    continue
                next_high = high[1:] if digit == bound else None
            groups.setdefault((next_low, next_high), []).append(digit)
        alts = []
        for (next_low, next_high), digits in groups.items():
            cls = _class(_normalize([(0x30 + d, 0x30 + d) for d in digits]))
            stop, more = self._fraction(next_low, low_strict, next_high, high_strict, room - 1)
            if more and stop:
                alts.append(f"{cls} {more}?" if _is_atom(more) else f"{cls} ( {more} )?")
            elif more:
                alts.append(f"{cls} {more}")
            elif stop:
                alts.append(cls)
        rule = self.grammar.helper("fraction", " | ".join(alts)) if alts else None
        self._fractions[key] = rule
        return ends, rule

    def _whole(self, lo: int, hi: int | None, max_digits: int) -> list[tuple[int, str]]:
        """Canonical decimal integers in [lo, hi], grouped by length: (length, expression)."""
        cap = 10**max_digits - 1
        hi = cap if hi is None else min(hi, cap)
        out = []
        for length in range(len(str(lo)), len(str(hi)) + 1):
            first = max(lo, 10 ** (length - 1) if length > 1 else 0)
            last = min(hi, 10**length - 1)
            if first <= last:
                out.append((length, self._digits(str(first), str(last))))
        return out

    def _digits(self, x: str, y: str) -> str:
        """Digit strings of one length between x and y inclusive; no top-level '|'."""
        if x == y:
            return _lit(x)
        if len(x) == 1:
            return f"[{x}-{y}]"
        if x[0] == y[0]:
            return _seq(_lit(x[0]), self._digits(x[1:], y[1:]))
        rest = len(x) - 1
        alts = []
        first, last = int(x[0]), int(y[0])
        if x[1:] != "0" * rest:
            alts.append(_seq(_lit(x[0]), self._digits(x[1:], "9" * rest)))
            first += 1
        tail = ""
        if y[1:] != "9" * rest:
            tail = _seq(_lit(y[0]), self._digits("0" * rest, y[1:]))
            last -= 1
        if first <= last:
            lead = _lit(str(first)) if first == last else f"[{first}-{last}]"
            alts.append(_seq(lead, "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
        if tail:
            alts.append(tail)
        return alts[0] if len(alts) == 1 else self.grammar.helper("digits", " | ".join(alts))


def _literal_values(schema: Mapping[str, Any]) -> list[Any] | None:
    """The values enum/const allow (intersected when both are given), or None."""
    values: list[Any] | None = None
    if "enum" in schema:
        values = _as_list(schema["enum"], "enum")
    if "const" in schema:
        const = schema["const"]
        values = [const] if values is None else [v for v in values if _json_eq(v, const)]
    return values


def _declared_types(schema: Mapping[str, Any], literals: list[Any] | None) -> set[str] | None:
    """The JSON types a schema admits by its own keywords, None when any type may pass."""
    if literals is not None:
        return set().union(*(_json_types(v) for v in literals)) if literals else set()
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list | tuple):
        return set(declared)
    return None


def _type_set(declared: object) -> set[str]:
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list | tuple) or not all(isinstance(t, str) for t in names):
        raise UnsupportedSchema("type", f"must be a type name or a list of them: {_show(declared)}")
    return set(names)


def _ref_hint(ref: object) -> str:
    return str(ref).rstrip("/").rsplit("/", 1)[-1] or "ref"
