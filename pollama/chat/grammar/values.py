"""JSON values in a schema: display, compact spelling, equality, types, keyword values."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pollama.chat.grammar.charsets import _json_char
from pollama.errors import InvalidFormat, UnsupportedSchema


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
