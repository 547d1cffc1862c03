"""A bounded Jinja sandbox for chat templates, which come from model files: untrusted input.

Jinja's ImmutableSandboxedEnvironment already refuses internals (``__class__``,
``__subclasses__``, anything starting with ``_``) and mutation of lists and dicts.
It does not bound how long a template runs or how much it builds, so a template
could hang the server or exhaust its memory. Every render gets a budget:

- **steps** (MAX_STEPS): each loop iteration, each call (macros, methods, global
  functions) and each filter costs one. This bounds CPU time (about a second of
  Jinja at most) without a clock, so limits are deterministic.
- **value size** (MAX_VALUE_CHARS): no string, list or dict a template builds may
  weigh more (a container weighs what its items do, so a list holding one long
  string many times is heavy). Operations whose result can dwarf their inputs are
  checked *before* they run: ``*``, ``**``, ``+``, ``~``, ``%`` and ``str.format``
  widths, ``center``/``ljust``/``rjust``/``zfill``/``indent``, ``replace``,
  ``join``, ``batch``/``slice``; other filters and calls are checked after.
- **work** (MAX_WORK_CHARS): every piece of output, including output buffered by
  macros and ``{% set %}`` blocks, is charged, so many medium strings cannot add
  up to a huge one behind the value check.

The final output is capped at MAX_VALUE_CHARS too (16 MiB). Anything over a
limit raises InvalidTemplate. The budget travels in a ContextVar because Jinja's
hooks receive no per-render state of ours, and a ContextVar is per thread and per
task, so concurrent renders do not share a budget.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from pollama.errors import InvalidTemplate

MAX_VALUE_CHARS = 16 * 1024 * 1024
MAX_WORK_CHARS = 256 * 1024 * 1024
MAX_STEPS = 4_000_000
MAX_ITEMS = 1_000_000  # batch/slice counts
MAX_INT_BITS = 65_536  # integers beyond this are not chat-template arithmetic
MAX_JSON_INDENT = 64


@dataclass
class _Budget:
    """What one render has spent so far (mutable on purpose: it is the counter)."""

    steps: int = 0
    work: int = 0


_BUDGET: ContextVar[_Budget] = ContextVar("pollama_template_budget")


class TemplateRaised(Exception):
    """Raised by the template's own ``raise_exception(message)``."""


def _budget() -> _Budget:
    try:
        return _BUDGET.get()
    except LookupError:
        raise InvalidTemplate("template rendered outside render_bounded") from None


def _step() -> None:
    budget = _budget()
    budget.steps += 1
    if budget.steps > MAX_STEPS:
        raise InvalidTemplate(f"template exceeded {MAX_STEPS} steps (a loop that never ends?)")


def _charge(chars: int) -> None:
    budget = _budget()
    budget.work += chars
    if budget.work > MAX_WORK_CHARS:
        raise InvalidTemplate(f"template built more than {MAX_WORK_CHARS} characters")


def weight(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """Characters ``value`` would take as text, counted until ``limit`` is passed:
    strings by length, containers by their items (one per item plus the items')."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 1 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 1
    return total


def _too_big(size: int, what: str) -> None:
    if size > MAX_VALUE_CHARS:
        raise InvalidTemplate(f"template {what} would exceed {MAX_VALUE_CHARS} characters")


def _checked(value: Any, what: str) -> Any:
    if isinstance(value, str | list | tuple | dict | set | frozenset):
        _too_big(weight(value), what)
    return value


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_spec_number(number: str) -> None:
    if number == "*":
        raise InvalidTemplate("template format width '*' is not allowed")
    _too_big(int(number), "format width")


def _check_percent_format(fmt: str) -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for number in match.groups():
            if number is not None:
                _check_spec_number(number)


def _check_str_format(fmt: str) -> None:
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise InvalidTemplate("template format specs may not nest replacement fields")
        for number in _DIGITS.findall(spec):
            _check_spec_number(number)


def _check_replace(text: Any, old: Any, new: Any, *_: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        _too_big(len(text) + hits * max(0, len(new) - len(old)), "replace result")


def _check_join(items: Any, separator: Any) -> None:
    if isinstance(items, list | tuple) and isinstance(separator, str):
        _too_big(weight(items) + len(separator) * len(items), "join result")


def _check_width(text: Any, width: Any = 0, *_: Any) -> None:
    if isinstance(width, int):
        _too_big(width + (len(text) if isinstance(text, str) else 0), "padded string")


def _check_indent(text: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    if isinstance(text, str):
        prefix = width if isinstance(width, int) else len(str(width))
        _too_big(len(text) + (text.count("\n") + 1) * prefix, "indented string")


def _check_count(count: Any) -> None:
    if isinstance(count, int) and count > MAX_ITEMS:
        raise InvalidTemplate(f"template asked for {count} groups (at most {MAX_ITEMS})")


# Checks that run before a filter, given its value and arguments (the context
# argument of pass_context/pass_eval_context filters already stripped).
_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda text, width=80, *_: _check_width(text, width),
    "indent": _check_indent,
    "replace": _check_replace,
    "join": lambda items, separator="", *_, **__: _check_join(items, separator),
    "batch": lambda items, count, *_: _check_count(count),
    "slice": lambda items, count, *_: _check_count(count),
    "format": lambda fmt, *_, **__: _check_percent_format(fmt) if isinstance(fmt, str) else None,
}

# The same for str methods called from a template.
_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_width,
    "ljust": _check_width,
    "rjust": _check_width,
    "zfill": _check_width,
    "expandtabs": lambda text, tabsize=8: _too_big(len(text) * max(tabsize, 1), "expanded tabs"),
    "replace": _check_replace,
    "join": lambda separator, items: _check_join(items, separator),
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        if check is not None:
            check(*args[skip:], **kwargs)
        return _checked(func(*args, **kwargs), f"filter {name!r} result")

    return guarded


class _CountedIterable:
    """A loop's iterable that charges one step per item; keeps ``len`` for loop.length."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable:
            _step()
            yield item

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]  # TypeError tells Jinja to count


def counted(iterable: Iterable[Any]) -> _CountedIterable:
    return _CountedIterable(iterable)


def concat(*parts: Any) -> str:
    """Jinja's ``~``, size-checked before joining; the parts after the first are
    charged as work (the first is usually the accumulator being extended)."""
    texts = [str(part) for part in parts]
    _too_big(sum(map(len, texts)), "string")
    _charge(sum(map(len, texts[1:])))
    return "".join(texts)


def account(value: Any) -> Any:
    """Charge a piece of output as work and hand it back unchanged."""
    _charge(len(value) if isinstance(value, str) else weight(value, MAX_WORK_CHARS))
    return value


def _tojson(value: Any, indent: int | str | None = None, **kwargs: Any) -> str:
    """HF's tojson: keeps non-ASCII, supports indent; unlike Jinja's, no HTML escaping."""
    if isinstance(indent, int) and indent > MAX_JSON_INDENT:
        raise InvalidTemplate(f"tojson indent {indent} is over {MAX_JSON_INDENT}")
    return json.dumps(
        value,
        ensure_ascii=False,
        indent=indent,
        separators=kwargs.get("separators"),
        sort_keys=bool(kwargs.get("sort_keys", False)),
        default=_json_default,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        return None  # a missing field serialises as null rather than failing the render
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_NAME = __name__


def _call_of(function: str, *args: nodes.Expr, lineno: int) -> nodes.Call:
    call = nodes.Call(nodes.ImportedName(f"{_NAME}.{function}"), list(args), [], None, None)
    call.set_lineno(lineno)
    return call


class _Budgeted(NodeTransformer):
    """Rewrites a parsed template so loops, ``~`` and output pass through the budget.

    ImportedName nodes compile to module imports the template cannot name, so
    template code can neither call nor replace these hooks.
    """

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # transforms the children in place
        node.iter = _call_of("counted", node.iter, lineno=node.lineno)  # type: ignore[arg-type]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call_of("concat", *node.nodes, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_call_of("account", child, lineno=node.lineno) for child in node.nodes]
        return node


class _GenerationTag(Extension):
    """``{% generation %}…{% endgeneration %}`` (transformers' assistant-mask marker): the
    body renders as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The environment chat templates compile in; render them with render_bounded."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[loopcontrols, _GenerationTag],
        )
        self.globals.pop("lipsum", None)  # lipsum(n) builds text as large as asked
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then route loops, ``~`` and output through the budget (see module doc)."""
        tree = _Budgeted().visit(super()._parse(source, name, filename))
        tree.set_environment(self)  # the nodes we added need it for constant folding
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise InvalidTemplate("template integer arithmetic is too large")
            elif isinstance(right, int) and isinstance(left, str | list | tuple):
                _too_big(weight(left) * max(right, 0), "repeated value")
            elif isinstance(left, int) and isinstance(right, str | list | tuple):
                _too_big(weight(right) * max(left, 0), "repeated value")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(left.bit_length(), 1) * right > MAX_INT_BITS:
                    raise InvalidTemplate("template integer arithmetic is too large")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _too_big(weight(left) + weight(right), "concatenation")
                _charge(weight(right))
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            check = _METHOD_CHECKS.get(getattr(__obj, "__name__", ""))
            if check is not None:
                check(owner, *args, **kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return _checked(result, "call result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_str_format(value.__self__)
        return wrapped


def render_bounded(template: jinja2.Template, variables: dict[str, Any]) -> str:
    """Render a template compiled by BoundedSandbox within a fresh budget.

    Every failure is an InvalidTemplate whose message says what went wrong; the
    template is data from a model file, so anything it raises is its error.
    """
    token = _BUDGET.set(_Budget())
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > MAX_VALUE_CHARS:
                raise InvalidTemplate(f"template output exceeds {MAX_VALUE_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except InvalidTemplate:
        raise
    except TemplateRaised as exc:
        raise InvalidTemplate(f"template raised an error: {exc}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise InvalidTemplate(f"template attempted an unsafe operation: {exc}") from None
    except RecursionError:
        raise InvalidTemplate("template recursion is too deep") from None
    except Exception as exc:  # anything else the template's code raised
        raise InvalidTemplate(f"template failed to render: {type(exc).__name__}: {exc}") from exc
    finally:
        _BUDGET.reset(token)
