"""Schema keywords: the ones we enforce, the ones that constrain nothing, and size limits.

Reading a schema's own keywords without following any subschema: which
keywords are allowed at all (failing closed on the rest), which ones constrain
documents, which JSON types a schema generates, and the literal values its
``enum``/``const`` allow. Both the walker (``schema``) and ``allOf``/``oneOf``
reasoning (``combine``) read schemas this way. It imports only ``values``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollama.chat.grammar.values import as_list, json_eq, show
from pollama.errors import InvalidFormat, UnsupportedSchema

__all__ = [
    "ANNOTATIONS",
    "MAX_ITEMS",
    "MAX_LENGTH",
    "TYPES",
    "check_keywords",
    "constraining",
    "literal_values",
    "schema_types",
]

MAX_ITEMS = 1000
"""Largest minItems/maxItems we expand into a grammar."""
MAX_LENGTH = 10_000
"""Largest minLength/maxLength, and largest pattern quantifier bound."""

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Keywords that describe or organise a schema without constraining documents.
ANNOTATIONS = frozenset(
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
_ABSENT: Any = object()


def constraining(schema: Mapping[str, Any]) -> list[str]:
    """The keywords of ``schema`` that constrain documents (not annotations or ``x-*``)."""
    return [k for k in schema if k not in ANNOTATIONS and not k.startswith("x-")]


def check_keywords(schema: Mapping[str, Any]) -> None:
    """Refuse a schema with a keyword no grammar enforces: structured output fails closed."""
    for key, value in schema.items():
        if not isinstance(key, str):
            raise InvalidFormat(f"invalid format: schema key {key!r} is not a string")
        if key in _SUPPORTED or key in ANNOTATIONS or key.startswith("x-"):
            continue
        if key in _HARMLESS_VALUES and json_eq(value, _HARMLESS_VALUES[key]):
            continue
        raise UnsupportedSchema(key, "no grammar enforces it, so the schema is refused")


def schema_types(schema: Mapping[str, Any]) -> list[str]:
    """The JSON types to generate for ``schema``: its ``type``, else those its keywords imply."""
    declared = schema.get("type", _ABSENT)
    if declared is _ABSENT:
        keys = schema.keys()
        families = (
            ("object", _OBJECT_KEYWORDS),
            ("array", _ARRAY_KEYWORDS),
            ("string", _STRING_KEYWORDS),
            ("number", _NUMBER_KEYWORDS),
        )
        types = [t for t, words in families if keys & words] or list(TYPES)
    elif isinstance(declared, str):
        types = [declared]
    elif isinstance(declared, list | tuple) and declared:
        types = list(declared)
    else:
        raise UnsupportedSchema("type", f"must be a type name or a list of them: {show(declared)}")
    for t in types:
        if t not in TYPES:
            raise UnsupportedSchema("type", f"unknown type {show(t)}")
    if "number" in types and "integer" in types:
        types.remove("integer")  # every integer is a number
    return list(dict.fromkeys(types))


def literal_values(schema: Mapping[str, Any]) -> list[Any] | None:
    """The values enum/const allow (intersected when both are given), or None."""
    values: list[Any] | None = None
    if "enum" in schema:
        values = as_list(schema["enum"], "enum")
    if "const" in schema:
        const = schema["const"]
        values = [const] if values is None else [v for v in values if json_eq(v, const)]
    return values
