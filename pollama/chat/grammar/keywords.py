"""Schema keywords: the ones we enforce, the ones that constrain nothing, and size limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollama.chat.grammar.values import _json_eq
from pollama.errors import InvalidFormat, UnsupportedSchema

MAX_ITEMS = 1000
"""Largest minItems/maxItems we expand into a grammar."""
MAX_LENGTH = 10_000
"""Largest minLength/maxLength, and largest pattern quantifier bound."""

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


def _constraining(schema: Mapping[str, Any]) -> list[str]:
    return [k for k in schema if k not in _ANNOTATIONS and not k.startswith("x-")]


def _check_keywords(schema: Mapping[str, Any]) -> None:
    for key, value in schema.items():
        if not isinstance(key, str):
            raise InvalidFormat(f"invalid format: schema key {key!r} is not a string")
        if key in _SUPPORTED or key in _ANNOTATIONS or key.startswith("x-"):
            continue
        if key in _HARMLESS_VALUES and _json_eq(value, _HARMLESS_VALUES[key]):
            continue
        raise UnsupportedSchema(key, "no grammar enforces it, so the schema is refused")
