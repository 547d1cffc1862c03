"""Grammars from ``format``, checked by llama.cpp's own grammar engine.

Every grammar is judged by llama.cpp (in ``grammar_probe.py``, a subprocess):
it must parse, it must accept documents the schema allows and reject ones it
does not, and sampling the demo model under it must give JSON that validates.
Validation uses the small reference validator below (full JSON Schema
semantics for the keywords used here), never the module under test.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import selectors
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from pollama.chat.grammar import MAX_ITEMS, grammar_from_format, json_schema_to_grammar
from pollama.demo import demo_model_path
from pollama.errors import InvalidFormat, UnsupportedSchema

PROBE = Path(__file__).with_name("grammar_probe.py")


# ---- the probe


class GrammarProbe:
    """A running ``grammar_probe.py``; restarted if llama.cpp took it down."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(PROBE), str(demo_model_path())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._proc = proc
        assert self._read(proc, 120) == {"ready": True}
        return proc

    def _read(self, proc: subprocess.Popen[str], timeout: float) -> Any:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:]
            raise AssertionError(f"grammar probe died or hung; its stderr ends with:\n{tail}")
        return json.loads(line)

    def request(self, timeout: float = 120, **body: Any) -> Any:
        proc = self._proc if self._proc and self._proc.poll() is None else self._start()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(body) + "\n")
        proc.stdin.flush()
        reply = self._read(proc, timeout)
        assert "error" not in reply, reply["error"]
        return reply

    def parses(self, grammars: list[str]) -> list[bool]:
        return self.request(op="parse", grammars=grammars)["ok"]

    def accepts(self, grammar: str, texts: list[str]) -> list[bool]:
        return self.request(op="accepts", grammar=grammar, texts=texts)["ok"]

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None


@pytest.fixture(scope="module")
def probe() -> Iterator[GrammarProbe]:
    running = GrammarProbe()
    yield running
    running.close()
    running._stderr.close()


# ---- a reference validator


def _json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b if not _is_number(a) else _is_number(b) and a == b


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _has_type(v: Any, t: str) -> bool:
    return {
        "null": v is None,
        "boolean": isinstance(v, bool),
        "integer": _is_number(v) and float(v).is_integer(),
        "number": _is_number(v),
        "string": isinstance(v, str),
        "array": isinstance(v, list),
        "object": isinstance(v, dict),
    }[t]


_FORMAT_CHECKS: dict[str, Callable[[str], object]] = {
    "date": lambda s: re.fullmatch(r"\d{4}-\d\d-\d\d", s) and dt.date.fromisoformat(s),
    "time": lambda s: (
        re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", s) and dt.time.fromisoformat(s[:8])
    ),
    "date-time": lambda s: (
        "T" in s
        and _FORMAT_CHECKS["date"](s.split("T")[0])
        and _FORMAT_CHECKS["time"](s.split("T")[1])
    ),
    "uuid": lambda s: re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", s),
}


def errors(v: Any, schema: Any, root: Any = None) -> list[str]:
    """Why ``v`` is invalid against ``schema`` (empty when valid)."""
    root = schema if root is None else root
    if schema is True:
        return []
    if schema is False:
        return [f"{v!r}: false schema"]
    out: list[str] = []
    if "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        out += errors(v, target, root)
    for sub in schema.get("allOf", []):
        out += errors(v, sub, root)
    if "anyOf" in schema and not any(not errors(v, s, root) for s in schema["anyOf"]):
        out.append(f"{v!r}: no anyOf alternative matches")
    if "oneOf" in schema and sum(not errors(v, s, root) for s in schema["oneOf"]) != 1:
        out.append(f"{v!r}: not exactly one oneOf alternative matches")
    if "enum" in schema and not any(_json_eq(v, e) for e in schema["enum"]):
        out.append(f"{v!r}: not in enum")
    if "const" in schema and not _json_eq(v, schema["const"]):
        out.append(f"{v!r}: not the const")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_has_type(v, t) for t in types):
            out.append(f"{v!r}: not of type {types}")
    if isinstance(v, dict):
        props = schema.get("properties", {})
        out += [f"missing {k!r}" for k in schema.get("required", []) if k not in v]
        for k, item in v.items():
            if k in props:
                out += errors(item, props[k], root)
            else:
                out += errors(item, schema.get("additionalProperties", True), root)
    if isinstance(v, list):
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(v):
            out += errors(item, prefix[i] if i < len(prefix) else schema.get("items", True), root)
        if len(v) < schema.get("minItems", 0) or len(v) > schema.get("maxItems", len(v)):
            out.append(f"{v!r}: wrong number of items")
    if isinstance(v, str):
        if len(v) < schema.get("minLength", 0) or len(v) > schema.get("maxLength", len(v)):
            out.append(f"{v!r}: wrong length")
        if "pattern" in schema and not re.search(schema["pattern"], v):
            out.append(f"{v!r}: does not match {schema['pattern']!r}")
        if "format" in schema:
            try:
                ok = bool(_FORMAT_CHECKS[schema["format"]](v))
            except ValueError:
                ok = False
            if not ok:
                out.append(f"{v!r}: not a {schema['format']}")
    if _is_number(v):
        x = Decimal(repr(v)) if isinstance(v, float) else Decimal(v)
        for key, fails in (
            ("minimum", lambda b: x < b),
            ("maximum", lambda b: x > b),
            ("exclusiveMinimum", lambda b: x <= b),
            ("exclusiveMaximum", lambda b: x >= b),
            ("multipleOf", lambda b: x % b != 0),
        ):
            if key in schema and fails(Decimal(repr(schema[key]))):
                out.append(f"{v!r}: fails {key}")
    return out


def test_reference_validator_catches_violations() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 3}, "s": {"pattern": "^a+$"}},
        "required": ["n"],
    }
    assert errors({"n": 3, "s": "aa"}, schema) == []
    assert errors({"n": 4}, schema)
    assert errors({"n": 1.5}, schema)
    assert errors({"s": "aa"}, schema)
    assert errors({"n": 1, "s": "ab"}, schema)
    assert errors({"d": "2023-02-29"}, {"properties": {"d": {"format": "date"}}})


# ---- schemas used below

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name"],
        }
    },
    "$ref": "#/$defs/node",
}

PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "species": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "owner": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "verified": {"type": "boolean"},
            },
            "required": ["city", "verified"],
        },
    },
    "required": ["name", "species", "owner"],
}

ORDER = {
    "type": "object",
    "properties": {
        "lines": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["sku", "qty"],
            },
        }
    },
    "required": ["lines"],
}

EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "score": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
    },
    "required": ["id", "day", "at", "score"],
}

SHAPE = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0}},
            "required": ["kind", "r"],
        },
        {
            "type": "object",
            "properties": {
                "kind": {"const": "rect"},
                "w": {"type": "number"},
                "h": {"type": "number"},
            },
            "required": ["kind", "w", "h"],
        },
    ]
}

REPRESENTATIVE: dict[str, Any] = {
    "json mode": "json",
    "empty schema": {},
    "pet": PET,
    "order": ORDER,
    "tree": TREE,
    "event": EVENT,
    "shape oneOf": SHAPE,
    "code pattern": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    "unanchored pattern": {"type": "string", "pattern": "(ab|c\\d)+x?"},
    "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    "map": {"type": "object", "additionalProperties": {"type": "integer"}},
    "extras": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "ident": {"type": "string"}},
        "additionalProperties": {"type": "boolean"},
    },
    "nullable": {"type": ["string", "null"], "maxLength": 3},
    "mixed enum": {"enum": [1, "a", None, {"x": [True, 2.5]}, 'é\n"\\😀']},
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    "number ranges": {
        "type": "object",
        "properties": {
            "p": {"type": "number", "exclusiveMinimum": -1.5, "maximum": 2.25},
            "cents": {"type": "number", "minimum": 0, "multipleOf": 0.01},
            "t": {"type": "integer", "minimum": -40, "exclusiveMaximum": 125},
        },
    },
    "long string": {"type": "string", "minLength": 1200, "maxLength": 2500},
    "definitions + recursion via anyOf": {
        "definitions": {
            "expr": {
                "anyOf": [
                    {"type": "integer"},
                    {"type": "array", "items": {"$ref": "#/definitions/expr"}, "maxItems": 3},
                ]
            }
        },
        "$ref": "#/definitions/expr",
    },
    "times": {"type": "array", "items": {"type": "string", "format": "time"}},
    "odd keys": {
        "type": "object",
        "properties": {
            "名前": {"type": "string"},
            "a b-c": {"type": "integer"},
            'quo"te\\': {"type": "null"},
            "": {"type": "boolean"},
        },
        "required": ["名前"],
    },
    "anyOf over siblings": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
}


# ---- llama.cpp parses them


@pytest.mark.llama
def test_llama_cpp_parses_every_grammar(probe: GrammarProbe) -> None:
    grammars = {name: grammar_from_format(fmt) for name, fmt in REPRESENTATIVE.items()}
    verdicts = dict(zip(grammars, probe.parses(list(grammars.values())), strict=True))
    assert [name for name, ok in verdicts.items() if not ok] == []
    # The probe can tell: a broken grammar is refused.
    assert probe.parses(["root ::= undefined-rule", 'root ::= "a"']) == [False, True]


# ---- fail closed


@pytest.mark.parametrize(
    ("keyword", "schema"),
    [
        ("if", {"if": {"type": "string"}, "then": {"minLength": 1}}),
        ("not", {"not": {"type": "null"}}),
        ("patternProperties", {"type": "object", "patternProperties": {"^x": {}}}),
        ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}),
        ("propertyNames", {"type": "object", "propertyNames": {"maxLength": 3}}),
        ("unevaluatedProperties", {"type": "object", "unevaluatedProperties": False}),
        ("contains", {"type": "array", "contains": {"type": "integer"}}),
        ("uniqueItems", {"type": "array", "uniqueItems": True}),
        ("minProperties", {"type": "object", "minProperties": 1}),
        ("maxProperties", {"type": "object", "maxProperties": 2}),
        ("$ref", {"$ref": "https://example.com/schema.json"}),
        ("$ref", {"$ref": "#/$defs/missing"}),
        ("$ref", {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        ("format", {"type": "string", "format": "email"}),
        ("pattern", {"type": "string", "pattern": "(?=a)b"}),
        ("pattern", {"type": "string", "pattern": "(?<!a)b"}),
        ("pattern", {"type": "string", "pattern": "(a)\\1"}),
        ("pattern", {"type": "string", "pattern": "\\bword"}),
        ("pattern", {"type": "string", "pattern": "\\p{L}"}),
        ("pattern", {"type": "string", "pattern": "a^b"}),
        ("pattern", {"type": "string", "pattern": "(a*)*"}),
        ("pattern", {"type": "string", "pattern": "[a-"}),
        ("pattern", {"type": "string", "pattern": "a{,3}"}),
        ("maxLength", {"type": "string", "pattern": "^a+$", "maxLength": 3}),
        ("maxItems", {"type": "array", "maxItems": MAX_ITEMS + 1}),
        ("multipleOf", {"type": "integer", "multipleOf": 3}),
        ("multipleOf", {"type": "number", "multipleOf": 0.25}),
        ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "number"}]}),
        ("oneOf", {"oneOf": [{"type": "string"}, {"maxLength": 2}]}),
        ("allOf", {"allOf": [{"type": "string"}, {"type": "integer"}]}),
        ("allOf", {"allOf": [{"pattern": "^a"}, {"pattern": "^b"}]}),
        (
            "allOf",
            {
                "allOf": [
                    {"properties": {"a": {}}, "additionalProperties": False},
                    {"properties": {"b": {}}, "required": ["b"]},
                ]
            },
        ),
        ("required", {"type": "object", "properties": {}, "required": ["a"]}),
        ("minimum", {"type": "integer", "minimum": 5, "maximum": 4}),
        ("const", {"const": float("nan")}),
        ("enum", {"type": "string", "enum": [1, 2]}),
        ("type", {"type": "decimal"}),
        ("contentEncoding", {"type": "string", "contentEncoding": "base64"}),
    ],
)
def test_unenforceable_schemas_are_refused_naming_the_keyword(keyword: str, schema: Any) -> None:
    with pytest.raises(UnsupportedSchema) as raised:
        grammar_from_format(schema)
    assert raised.value.keyword == keyword
    assert keyword in str(raised.value)


@pytest.mark.parametrize("fmt", ["yaml", "JSON", 5, 1.5, ["a"], True, False])
def test_a_format_that_is_neither_json_nor_a_schema_is_invalid(fmt: object) -> None:
    with pytest.raises(InvalidFormat, match="invalid format") as raised:
        grammar_from_format(fmt)
    assert not isinstance(raised.value, UnsupportedSchema)
    assert json.dumps(fmt) in str(raised.value)


@pytest.mark.parametrize("fmt", [None, ""])
def test_no_format_means_no_grammar(fmt: object) -> None:
    assert grammar_from_format(fmt) == ""


def test_annotations_and_harmless_values_are_accepted() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/s",
        "title": "T",
        "description": "d",
        "$comment": "c",
        "type": "array",
        "items": {"type": "string", "examples": ["x"], "default": "x", "deprecated": False},
        "uniqueItems": False,
        "readOnly": True,
        "x-vendor": {"anything": 1},
    }
    assert json_schema_to_grammar(schema).startswith("root ::= ")


# ---- what the grammars accept

# (name, format, documents the grammar must derive, documents it must refuse). The
# refused ones are invalid, except a few valid ones refused by design: properties
# out of declared order, UTF-16 surrogate escapes, "-0", "1.0" for an integer,
# enum/const objects with spaces, exponents in bounded numbers.
ACCEPT_REJECT: list[tuple[str, Any, list[str], list[str]]] = [
    (
        "json mode wants a top-level object",
        "json",
        ['{"a": [1, {"b": null}], "c": "\\u00e9\\n"}', " {}", '{\n  "x": -0.5e3\n}'],
        ["[1]", '"a"', '{"a": 01}', '{"a": 1}  ', '{"a": "\n"}', '{"a": NaN}'],
    ),
    (
        "pet: required fields, enum, nested object, declared order",
        PET,
        [
            '{"name": "Tom", "species": "cat", "owner": {"city": "Oslo", "verified": true}}',
            '{"name":"Tom","species":"dog","age":30,"owner":{"city":"","verified":false}}',
            '{\n  "name": "T",\n  "species": "bird",\n  "age": 0,\n  "owner": {\n'
            '    "city": "Rome",\n    "verified": true\n  }\n}',
        ],
        [
            '{"name": "Tom", "owner": {"city": "Oslo", "verified": true}}',
            '{"name": "Tom", "species": "cow", "owner": {"city": "Oslo", "verified": true}}',
            '{"name": "Tom", "species": "cat", "age": 31, "owner": {"city": "", "verified": true}}',
            '{"name": "Tom", "species": "cat", "age": -1, "owner": {"city": "", "verified": true}}',
            '{"name": "", "species": "cat", "owner": {"city": "", "verified": true}}',
            '{"name": "T", "species": "cat", "owner": {"city": "", "verified": true}, "x": 1}',
            '{"species": "cat", "name": "T", "owner": {"city": "", "verified": true}}',
        ],
    ),
    (
        "additional properties follow the declared ones and never reuse their names",
        REPRESENTATIVE["extras"],
        ['{"id": 1, "ident": "a", "i": true}', '{"idx": false, "": true}', "{}", '{"ident": "x"}'],
        ['{"id": 1, "id": true}', '{"ident": true}', '{"x": 1}', '{"x": true, "id": 1}'],
    ),
    (
        "a map of integers",
        REPRESENTATIVE["map"],
        ['{"a": 1, "b": -2}', "{}"],
        ['{"a": "1"}', '{"a": 1.5}'],
    ),
    (
        "strings are JSON strings",
        {"type": "string"},
        ['"plain"', '"q\\"b\\\\s\\/\\b\\f\\n\\r\\t"', '"\\u00e9\\uFFFD é 😀"', '""'],
        ['"raw\nnewline"', '"bad \\x escape"', '"\\ud83d\\ude00"', '"unterminated', "'single'"],
    ),
    (
        "lengths count characters, an escape is one",
        {"type": "string", "minLength": 2, "maxLength": 3},
        ['"ab"', '"\\n\\t"', '"é😀x"', '"\\u0041bc"'],
        ['"a"', '"abcd"', '"\\n"', '""'],
    ),
    (
        "an anchored pattern",
        {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        ['"ABC-12"', '"ZZZ-00"'],
        ['"ABC-1"', '"abc-12"', '"xABC-12"', '"ABC-123"'],
    ),
    (
        "an unanchored pattern matches anywhere",
        {"type": "string", "pattern": "[0-9]"},
        ['"a1b"', '"7"', '"x\\ny2"'],
        ['"ab"', '""'],
    ),
    (
        "pattern characters that JSON must escape",
        {"type": "string", "pattern": '^"\\\\[\\n\\t]\\u00e9.$'},
        ['"\\"\\\\\\né!"', '"\\"\\\\\\té\\""'],
        ['"\\"\\\\\\rée"', '"\\"\\\\\\né\\n"'],
    ),
    (
        "calendar dates",
        {"type": "string", "format": "date"},
        ['"2024-02-29"', '"2000-02-29"', '"2023-12-31"', '"0001-01-01"'],
        ['"2023-02-29"', '"1900-02-29"', '"2024-04-31"', '"2024-13-01"', '"0000-01-01"'],
    ),
    (
        "RFC 3339 times and date-times",
        {"type": "array", "items": {"type": "string", "format": "date-time"}},
        ['["2024-05-01T12:30:00Z", "1999-12-31T23:59:59.123456+05:30"]'],
        ['["2024-05-01T24:00:00Z"]', '["2024-05-01T12:30:00"]', '["2024-05-01 12:30:00Z"]'],
    ),
    (
        "uuids",
        {"type": "string", "format": "uuid"},
        ['"123e4567-e89b-12d3-a456-426614174000"'],
        ['"123e4567e89b12d3a456426614174000"', '"123e4567-e89b-12d3-a456-42661417400g"'],
    ),
    (
        "tuples are exactly their items",
        REPRESENTATIVE["tuple"],
        ['["a", 1]', '[ "a" , -7 ]'],
        ['["a"]', '["a", 1, 2]', "[]", '[1, "a"]'],
    ),
    (
        "item counts",
        {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
        ["[true, false]", "[true,true,true]"],
        ["[true]", "[true, true, true, true]", "[]"],
    ),
    (
        "enums of any JSON values",
        REPRESENTATIVE["mixed enum"],
        ["1", '"a"', "null", '{"x":[true,2.5]}', '"é\\n\\"\\\\😀"'],
        ["2", '"b"', '{"x": [true, 2.5]}', "1.0"],
    ),
    (
        "tagged unions via oneOf",
        SHAPE,
        ['{"kind": "circle", "r": 1.5}', '{"kind": "rect", "w": 1, "h": 2e3}'],
        ['{"kind": "circle", "w": 1, "h": 2}', '{"kind": "circle", "r": -1}'],
    ),
    (
        "allOf merges objects",
        REPRESENTATIVE["allOf"],
        ['{"a": 1, "b": "x"}'],
        ['{"a": 1}', '{"b": "x"}'],
    ),
    (
        "a recursive tree",
        TREE,
        ['{"name": "r", "children": [{"name": "a"}, {"name": "b", "children": []}]}'],
        ['{"name": "r", "children": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}'],
    ),
    (
        "a type list",
        REPRESENTATIVE["nullable"],
        ['"abc"', "null"],
        ['"abcd"', "1"],
    ),
    (
        "integer ranges",
        {"type": "integer", "minimum": -40, "exclusiveMaximum": 125},
        ["-40", "0", "124", "99", "-9", "7"],
        ["-41", "125", "1000", "-0", "007", "1.0"],
    ),
    (
        "number ranges",
        {"type": "number", "exclusiveMinimum": -1.5, "maximum": 2.25},
        ["-1.49", "-1.4999", "0", "2.25", "2.250", "1", "-0.5"],
        ["-1.5", "-1.50", "-2", "2.2501", "2.26", "3", "1e0"],
    ),
    (
        "money: multipleOf 0.01",
        {"type": "number", "minimum": 0, "multipleOf": 0.01},
        ["0", "12.5", "12.34", "0.01"],
        ["12.345", "-1", "0.001"],
    ),
    (
        "long strings beyond llama.cpp's repetition limit",
        REPRESENTATIVE["long string"],
        ['"' + "a" * 1200 + '"', '"' + "b" * 2500 + '"'],
        ['"' + "a" * 1199 + '"', '"' + "a" * 2501 + '"'],
    ),
    (
        "property names of any spelling",
        REPRESENTATIVE["odd keys"],
        ['{"名前": "x", "a b-c": 1, "quo\\"te\\\\": null, "": false}', '{"名前": ""}'],
        ['{"a b-c": 1}', '{"名前": "x", "quo\\"te": null}'],
    ),
    (
        "anyOf distributes over its sibling keywords",
        REPRESENTATIVE["anyOf over siblings"],
        ['{"a": 1}', '{"b": "x"}', '{"a": 1, "b": "x"}'],
        ["{}", '{"a": "x"}', '{"c": 1}'],
    ),
    (
        "anything for the empty schema",
        {},
        ["1", '"x"', "[]", "null", '{"a": {}}', " true", "\n  false"],
        ["", "nul", "[1,]"],
    ),
]


@pytest.mark.llama
@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [pytest.param(fmt, good, bad, id=name) for name, fmt, good, bad in ACCEPT_REJECT],
)
def test_grammar_accepts_valid_and_rejects_invalid_documents(
    probe: GrammarProbe, fmt: Any, good: list[str], bad: list[str]
) -> None:
    schema = {"type": "object"} if fmt == "json" else fmt
    for text in good:  # the examples themselves must be right
        assert errors(json.loads(text), schema) == [], text
    verdicts = probe.accepts(grammar_from_format(fmt), good + bad)
    assert [t for t, ok in zip(good, verdicts, strict=False) if not ok] == []
    assert [t for t, ok in zip(bad, verdicts[len(good) :], strict=True) if ok] == []


@pytest.mark.llama
def test_a_pydantic_models_schema_accepts_its_own_dumps(probe: GrammarProbe) -> None:
    class Cat(BaseModel):
        pet_type: Literal["cat"]
        lives: int = Field(ge=1, le=9)

    class Dog(BaseModel):
        pet_type: Literal["dog"]
        bark: float

    class Node(BaseModel):
        name: str
        children: list[Node] = []

    class Record(BaseModel):
        id: uuid.UUID
        when: dt.datetime
        pet: Cat | Dog = Field(discriminator="pet_type")
        note: str | None = None
        tags: list[str] = Field(default_factory=list, max_length=3)
        code: str = Field(pattern=r"^[a-z]{2}\d+$")
        ratio: float = Field(gt=0, lt=1)
        counts: dict[str, int] = {}
        pair: tuple[int, str]
        tree: Node

    grammar = json_schema_to_grammar(Record.model_json_schema())
    record = Record(
        id=uuid.UUID(int=7),
        when=dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC),
        pet=Dog(pet_type="dog", bark=0.5),
        tags=["a"],
        code="ab12",
        ratio=0.25,
        counts={"x": 1},
        pair=(1, "a"),
        tree=Node(name="r", children=[Node(name="c")]),
    )
    good = record.model_dump_json()
    bad = good.replace('"code":"ab12"', '"code":"AB12"')
    assert probe.accepts(grammar, [good, bad]) == [True, False]


# ---- generation


def _prompt(request: str) -> str:
    return (
        "<|im_start|>system\nYou answer with JSON only.<|im_end|>\n"
        f"<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n"
    )


GENERATION = [
    ("pet", PET, "Describe a pet and its owner as JSON."),
    ("order", ORDER, "Write an order with a few product lines as JSON."),
    ("code", REPRESENTATIVE["code pattern"], "Give me a product code."),
    (
        "tree",
        TREE,
        'Write a tree as JSON like {"name": "A", "children": [{"name": "B"}, {"name": "C"}]} '
        "with other names.",
    ),
    ("json mode", "json", "Give the capital of France as JSON."),
    ("event", EVENT, "Log an event as JSON."),
]


@pytest.mark.llama
@pytest.mark.parametrize(
    ("fmt", "request_text"),
    [pytest.param(fmt, text, id=name) for name, fmt, text in GENERATION],
)
def test_generation_under_the_grammar_validates(
    probe: GrammarProbe, fmt: Any, request_text: str
) -> None:
    """Two sampled documents per schema validate.

    A grammar bounds what the model writes, not when it stops: a run may still
    be mid-document (say, nesting a tree ever deeper) at the token limit. Such
    runs prove nothing either way, so up to four seeds are tried for two that
    finish; every one that finishes must validate.
    """
    schema = {"type": "object"} if fmt == "json" else fmt
    grammar = grammar_from_format(fmt)
    finished = []
    for seed in range(1, 5):
        reply = probe.request(
            timeout=300,
            op="generate",
            grammar=grammar,
            prompt=_prompt(request_text),
            seed=seed,
            max_tokens=256,
        )
        if reply["stop"] == "eog":
            value = json.loads(reply["text"])
            assert errors(value, schema) == [], reply["text"]
            finished.append(value)
            if len(finished) == 2:
                return
    pytest.fail(f"only {len(finished)} of 4 runs finished within 256 tokens")


# ---- properties

# llama.cpp's tokenizer does not round-trip code points from plane 4 up.
CHARS = st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(CHARS, max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(CHARS, max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.llama
@PROPERTY_SETTINGS
@given(values=st.lists(json_values, min_size=1, max_size=4), other=json_values)
def test_const_and_enum_grammars_accept_exactly_their_values(
    probe: GrammarProbe, values: list[Any], other: Any
) -> None:
    texts = [_compact(v) for v in values]
    assert probe.accepts(json_schema_to_grammar({"const": values[0]}), texts[:1]) == [True]
    verdicts = probe.accepts(json_schema_to_grammar({"enum": values}), [*texts, _compact(other)])
    assert verdicts == [True] * len(texts) + [_compact(other) in texts]


@pytest.mark.llama
@PROPERTY_SETTINGS
@given(text=st.text(CHARS, max_size=20), extra=st.integers(0, 3))
def test_any_string_round_trips_and_lengths_are_exact(
    probe: GrammarProbe, text: str, extra: int
) -> None:
    doc = json.dumps(text, ensure_ascii=False)
    n = len(text)
    grammars = [
        json_schema_to_grammar({"type": "string"}),
        json_schema_to_grammar({"type": "string", "minLength": n, "maxLength": n + extra}),
        json_schema_to_grammar({"type": "string", "minLength": n + 1}),
    ]
    verdicts = [probe.accepts(g, [doc])[0] for g in grammars]
    assert verdicts == [True, True, False]
    if n:
        short = json_schema_to_grammar({"type": "string", "maxLength": n - 1})
        assert probe.accepts(short, [doc]) == [False]


PATTERNS = [
    "^[A-Z]{3}-[0-9]{2}$",
    "^(ab|c[d-f])*x?$",
    "^a.c$",
    "^[^a-c]+b{2,3}$",
    "^(?:0|[1-9][0-9]*)(?:\\.[0-9]{1,2})?$",
    "^[\\w.-]+@[a-z]+\\.(com|org)$",
    "ab+c",
    "^\\d\\D\\W$",
    '^["\\\\/]{1,3}$',
]
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@pytest.mark.llama
@PROPERTY_SETTINGS
@given(data=st.data())
def test_pattern_grammars_agree_with_the_regex(probe: GrammarProbe, data: st.DataObject) -> None:
    pattern = data.draw(st.sampled_from(PATTERNS))
    matching = data.draw(st.lists(st.from_regex(pattern, alphabet=ASCII), max_size=3))
    # Random strings over the pattern's own characters, mostly not matching.
    noise = data.draw(
        st.lists(
            st.text(st.sampled_from(sorted(set(pattern) | set("ab1 "))), max_size=8), max_size=4
        )
    )
    texts = matching + noise
    verdicts = probe.accepts(
        json_schema_to_grammar({"type": "string", "pattern": pattern}),
        [json.dumps(t, ensure_ascii=False) for t in texts],
    )
    # JSON Schema's '$' is ECMA-262's: the very end, not also before a final newline.
    expected = [re.search(pattern.replace("$", "\\Z"), t) is not None for t in texts]
    assert verdicts == expected, list(zip(texts, verdicts, strict=True))


bounds = st.one_of(st.none(), st.integers(-(10**7), 10**7))


@pytest.mark.llama
@PROPERTY_SETTINGS
@given(lo=bounds, hi=bounds, exclusive=st.booleans(), xs=st.lists(st.integers(-(10**8), 10**8)))
def test_integer_ranges_are_exact(
    probe: GrammarProbe, lo: int | None, hi: int | None, exclusive: bool, xs: list[int]
) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    if lo is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    if lo is not None and hi is not None and (lo >= hi if exclusive else lo > hi):
        with pytest.raises(UnsupportedSchema):
            json_schema_to_grammar(schema)
        return
    xs += [v + d for v in (lo, hi) if v is not None for d in (-1, 0, 1)]
    verdicts = probe.accepts(json_schema_to_grammar(schema), [str(x) for x in xs])
    assert verdicts == [errors(x, schema) == [] for x in xs], list(zip(xs, verdicts, strict=True))


decimals = st.decimals(
    min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False
)


@pytest.mark.llama
@PROPERTY_SETTINGS
@given(
    lo=st.none() | decimals,
    hi=st.none() | decimals,
    lo_exclusive=st.booleans(),
    hi_exclusive=st.booleans(),
    xs=st.lists(decimals, max_size=6),
)
def test_number_ranges_are_exact(
    probe: GrammarProbe,
    lo: Decimal | None,
    hi: Decimal | None,
    lo_exclusive: bool,
    hi_exclusive: bool,
    xs: list[Decimal],
) -> None:
    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_exclusive else "minimum"] = float(lo)
    if hi is not None:
        schema["exclusiveMaximum" if hi_exclusive else "maximum"] = float(hi)
    try:
        grammar = json_schema_to_grammar(schema)
    except UnsupportedSchema:
        assert lo is not None and hi is not None and lo >= hi
        return
    texts = [format(x, "f") for x in xs]
    for v in (lo, hi):
        if v is not None:
            texts += [format(v, "f"), format(v + Decimal("0.001"), "f"), format(v - 1, "f")]
    texts = [t for t in texts if not (t.startswith("-") and Decimal(t) == 0)]  # "-0" is refused
    verdicts = probe.accepts(grammar, texts)
    expected = [errors(json.loads(t), schema) == [] for t in texts]
    assert verdicts == expected, list(zip(texts, verdicts, strict=True))
