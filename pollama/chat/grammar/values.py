"""JSON values in a schema: display, compact spelling, equality, types, keyword values.

Everything that looks at a JSON value rather than at a schema's structure:
how an error message shows it, how a literal is spelled compactly, JSON Schema
equality (1 == 1.0, true != 1), the types a value belongs to, and reading a
keyword's value as a count, a decimal or a non-empty list. It imports only
``charsets`` (to spell string characters).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pollama.chat.grammar.charsets import json_char
from pollama.errors import InvalidFormat, UnsupportedSchema

__all__ = [
    "as_count",
    "as_decimal",
    "as_list",
    "canonical",
    "json_eq",
    "json_text",
    "json_types",
    "show",
    "types_overlap",
]


def show(value: object) -> str:
    """``value`` as an error message quotes it: JSON where possible, cut to 80 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_text(value: object, keyword: str) -> str:
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
        return '"' + "".join(json_char(ord(c)) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_text(v, keyword) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidFormat(f"invalid format: {keyword} has a non-string key {k!r}")
            items.append(f"{json_text(k, keyword)}:{json_text(v, keyword)}")
        return "{" + ",".join(items) + "}"
    raise InvalidFormat(f"invalid format: {keyword} holds {value!r}, which is not JSON")


def json_eq(a: object, b: object) -> bool:
    """JSON Schema equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return False


def json_types(value: object) -> set[str]:
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


def types_overlap(a: set[str], b: set[str]) -> bool:
    """Whether some value has a type in both sets (an integer is also a number)."""
    widen = {"integer": {"integer", "number"}, "number": {"integer", "number"}}
    return any(widen.get(t, {t}) & b for t in a)


def canonical(schema: object) -> str:
    """A text equal for equal schemas, so a schema met twice reuses its rule."""
    try:
        return json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidFormat(
            f"invalid format: the JSON schema holds a non-JSON value ({exc})"
        ) from None


def as_count(schema: Mapping[str, Any], keyword: str, cap: int) -> int | None:
    """A non-negative integer keyword such as minItems, or None when absent."""
    if keyword not in schema:
        return None
    value = schema[keyword]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsupportedSchema(keyword, f"must be a non-negative integer, not {show(value)}")
    if value > cap:
        raise UnsupportedSchema(keyword, f"{value} is more than the supported {cap}")
    return value


def as_decimal(value: object, keyword: str) -> Decimal:
    """A numeric keyword as an exact decimal, so bounds compare without float rounding."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedSchema(keyword, f"must be a number, not {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsupportedSchema(keyword, f"{value!r} is not a JSON number")
    # repr() is the shortest text that reads back as this float: the number as written.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def as_list(value: object, keyword: str) -> list[Any]:
    """A keyword that must hold a non-empty array (enum, anyOf, ...), as a list."""
    if not isinstance(value, list | tuple) or not value:
        raise UnsupportedSchema(keyword, f"must be a non-empty array, not {show(value)}")
    return list(value)
