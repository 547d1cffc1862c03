"""Values and functions for Go templates (see pollama.chat.gotemplate): field lookup
on API dicts, Go's truth and printing rules, and the template functions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pollama.errors import InvalidTemplate

MAX_OUTPUT_CHARS = 16 * 1024 * 1024


@lru_cache(maxsize=256)
def _key_candidates(name: str) -> tuple[str, ...]:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return (name, snake, name[:1].lower() + name[1:])


def field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        for key in _key_candidates(name):
            if key in value:
                return value[key]
        return None
    raise InvalidTemplate(f"template: can't evaluate field {name} in type {_go_type(value)}")


def _go_type(value: Any) -> str:
    names = {str: "string", bool: "bool", int: "int", float: "float64", list: "slice"}
    return names.get(type(value), type(value).__name__)


def truthy(value: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, slices and maps are false."""
    if isinstance(value, bool | int | float | str | list | tuple | dict):
        return bool(value)
    return value is not None


def _go_float(value: float) -> str:
    """fmt's %v for a float64: shortest digits, exponent form outside [1e-4, 1e21)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    number = Decimal(repr(value)).normalize()
    if -4 <= number.adjusted() < 21:
        return format(number, "f")
    mantissa, exponent = format(number, "e").split("e")
    return f"{mantissa}e{exponent[0]}{int(exponent[1:]):02d}"


def _integral(value: Any) -> Any:
    """JSON numbers the way Go's encoder writes float64s: 1.0 as 1."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, Mapping):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_integral(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """Go's json.Marshal: compact, non-ASCII kept, ``<``, ``>``, ``&``, U+2028/9 escaped."""
    text = json.dumps(_integral(value), ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def to_text(value: Any) -> str:
    """How an action prints a value (fmt.Sprint, with the exceptions in the module doc)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Mapping):
        return go_json(value)
    if isinstance(value, list | tuple):
        if any(isinstance(item, Mapping) for item in value):
            return go_json(value)
        return "[" + " ".join(to_text(item) for item in value) + "]"
    return str(value)


# -- functions -------------------------------------------------------------------------------


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise InvalidTemplate("template: incompatible types for comparison") from None

    return compare


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise InvalidTemplate("template: missing argument for comparison")
    return any(first == other for other in others)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go counts bytes
    if isinstance(value, list | tuple | Mapping):
        return len(value)
    raise InvalidTemplate(f"template: len of type {_go_type(value)}")


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list | tuple | str) and isinstance(key, int):
            items = value.encode() if isinstance(value, str) else value
            if not 0 <= key < len(items):
                raise InvalidTemplate(f"template: index out of range: {key}")
            value = items[key]
        else:
            raise InvalidTemplate(f"template: can't index item of type {_go_type(value)}")
    return value


def _slice(value: Any, *bounds: Any) -> Any:
    items = value.encode() if isinstance(value, str) else value
    if not isinstance(items, list | tuple | bytes) or len(bounds) > (
        2 if isinstance(value, str) else 3
    ):
        raise InvalidTemplate(f"template: can't slice item of type {_go_type(value)}")
    start, stop = (list(bounds[:2]) + [0, len(items)][len(bounds) :])[:2]
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= len(items)):
        raise InvalidTemplate(f"template: slice index out of range: {bounds}")
    part = items[start:stop]
    return part.decode(errors="replace") if isinstance(part, bytes) else part


def _sprint(*args: Any) -> str:
    # fmt.Sprint: a space between operands when neither is a string.
    out = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(to_text(arg))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _sprintf(fmt: str, *args: Any) -> str:
    queue = list(args)

    def one(match: re.Match[str]) -> str:
        flags, width, precision, verb = match.groups()
        if verb == "%":
            return "%"
        if int(width or 0) > MAX_OUTPUT_CHARS or int(precision or 0) > MAX_OUTPUT_CHARS:
            raise InvalidTemplate("template: printf width too large")
        if not queue:
            return f"%!{verb}(MISSING)"
        arg = queue.pop(0)
        if verb in "sv":
            text = to_text(arg)
        elif verb == "q":
            text = json.dumps(str(arg), ensure_ascii=False)
        elif verb == "t":
            text = to_text(bool(arg))
        elif verb == "d" and isinstance(arg, int):
            text = str(arg)
        elif verb in "feg" and isinstance(arg, int | float):
            text = format(arg, f".{precision or 6}{verb}")
        else:
            raise InvalidTemplate(f"template: printf verb %{verb} is not supported")
        align = "<" if "-" in flags else ">"
        return format(text, f"{align}{width or 0}")

    return _VERB.sub(one, fmt)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "not": lambda value: not truthy(value),
    "eq": _eq,
    "ne": _compare(lambda a, b: a != b),
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "println": lambda *args: " ".join(to_text(arg) for arg in args) + "\n",
    "printf": _sprintf,
    "json": go_json,
}
