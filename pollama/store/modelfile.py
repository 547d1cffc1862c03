"""Modelfiles: parse, render, and the text ``/api/show`` returns.

    FROM llama3.2                  a model name or a GGUF path (required, once)
    FROM ./mmproj.gguf             a second FROM: the model's vision projector (optional)
    DRAFT smollm2-draft            a draft model (a name or a GGUF path) for speculative
                                   decoding; the last one wins
    PARAMETER temperature 0.7      repeatable; ``stop`` lines accumulate
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"   the last one wins
    SYSTEM "You are terse."        the last one wins
    ADAPTER ./lora.gguf            repeatable
    LICENSE \"\"\"...\"\"\"              repeatable
    MESSAGE user Hello             repeatable; role system, user or assistant

Keywords are case-insensitive; a line starting with ``#`` is a comment (a ``#``
later in a line is part of the value). A value is the rest of the line
(surrounding whitespace dropped), or ``\"\"\"``-quoted (verbatim, may span
lines, cannot contain ``\"\"\"``), or ``"``-quoted (may span lines; ``\\"`` and
``\\\\`` are escapes, any other backslash is literal so Windows paths work).
Windows line endings (carriage returns before a newline) are read as ``\\n``.
``render`` picks, per value, a form that reads back to the same value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pollama.errors import InvalidModelfile, InvalidOption
from pollama.options.parameters import (
    ParameterValue,
    collect_parameters,
    parse_parameter,
)

if TYPE_CHECKING:
    from pollama.store.resolved import ResolvedModel

MESSAGE_ROLES = ("system", "user", "assistant")
_COMMANDS = ("FROM", "DRAFT", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
_TRIPLE = '"""'
# CRLF, and any run of carriage returns before a newline: no value can end a line with
# one, or it could not be rendered back (a "\r\n" in it would be read as "\n").
_LINE_END = re.compile(r"\r+\n")


@dataclass(frozen=True)
class Modelfile:
    from_: str
    parameters: tuple[tuple[str, ParameterValue], ...] = ()
    """PARAMETER lines in order, values typed (one entry per ``stop`` line)."""
    projector: str | None = None
    """A second FROM: the vision projector's GGUF."""
    draft: str | None = None
    """DRAFT: the draft model (a stored model's name or a GGUF path) that drafts tokens
    for this one to verify."""
    template: str | None = None
    system: str | None = None
    adapters: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    """(role, content) pairs."""

    def parameter_dict(self) -> dict[str, Any]:
        """The parameters as the params layer stores them (``stop`` as a list)."""
        return collect_parameters(self.parameters)

    def render(self) -> str:
        """Modelfile text that ``parse_modelfile`` reads back to this Modelfile."""
        lines = [f"FROM {_quote(self.from_)}"]
        if self.projector is not None:
            lines.append(f"FROM {_quote(self.projector)}")
        if self.draft is not None:
            lines.append(f"DRAFT {_quote(self.draft)}")
        lines += [f"ADAPTER {_quote(adapter)}" for adapter in self.adapters]
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote(self.template, block=True)}")
        lines += [f"PARAMETER {key} {_format_value(value)}" for key, value in self.parameters]
        if self.system is not None:
            lines.append(f"SYSTEM {_quote(self.system, block=True)}")
        lines += [f"MESSAGE {role} {_quote(content)}" for role, content in self.messages]
        lines += [f"LICENSE {_quote(text, block=True)}" for text in self.licenses]
        return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; InvalidModelfile naming the line for anything wrong."""
    lines = _LINE_END.sub("\n", text).split("\n")
    froms: list[str] = []  # the model, then its projector
    texts: dict[str, str] = {}  # TEMPLATE, SYSTEM, DRAFT: a later one replaces an earlier one
    parameters: list[tuple[str, ParameterValue]] = []
    lists: dict[str, list[str]] = {"ADAPTER": [], "LICENSE": []}
    messages: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        word, _, rest = _split(line)
        command, where = word.upper(), f"line {lineno}"
        if command not in _COMMANDS:
            raise InvalidModelfile(f"{where}: unknown command {word!r}")
        if command in ("PARAMETER", "MESSAGE"):
            name, found, rest = _split(rest)
            if not found or not rest.strip():
                what = "a name and a value" if command == "PARAMETER" else "a role and content"
                raise InvalidModelfile(f"{where}: {command} needs {what}")
        value, i = _read_value(lines, i, rest, f"{where}: {command}")
        if command == "FROM":
            if len(froms) == 2:
                raise InvalidModelfile(f"{where}: a third FROM (a model and its projector at most)")
            froms.append(value)
        elif command == "PARAMETER":
            parameters.append(_parameter(name, value, where))
        elif command == "MESSAGE":
            if name.lower() not in MESSAGE_ROLES:
                raise InvalidModelfile(
                    f"{where}: MESSAGE role must be system, user or assistant, not {name!r}"
                )
            messages.append((name.lower(), value))
        elif command in lists:
            lists[command].append(value)
        else:
            texts[command] = value
    if not froms:
        raise InvalidModelfile("no FROM line: a Modelfile must name the model it builds on")
    return Modelfile(
        from_=froms[0],
        projector=froms[1] if len(froms) > 1 else None,
        draft=texts.get("DRAFT"),
        parameters=tuple(parameters),
        template=texts.get("TEMPLATE"),
        system=texts.get("SYSTEM"),
        adapters=tuple(lists["ADAPTER"]),
        licenses=tuple(lists["LICENSE"]),
        messages=tuple(messages),
    )


def _parameter(name: str, value: str, where: str) -> tuple[str, ParameterValue]:
    key = name.lower()
    try:
        typed = parse_parameter(key, value)
    except InvalidOption as exc:
        raise InvalidModelfile(f"{where}: {exc}") from None
    if isinstance(typed, float) and not math.isfinite(typed):  # "1e999": JSON cannot carry it
        raise InvalidModelfile(f"{where}: {value!r} for parameter '{key}' is not a finite number")
    return key, typed


def modelfile_for(resolved: ResolvedModel) -> str:
    """The Modelfile ``/api/show`` returns for a stored model."""
    pairs: list[tuple[str, ParameterValue]] = []
    for key, value in sorted(resolved.parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, item))
    modelfile = Modelfile(
        from_=str(resolved.model_path),
        projector=str(resolved.projector_paths[0]) if resolved.projector_paths else None,
        draft=str(resolved.draft_path) if resolved.draft_path is not None else None,
        parameters=tuple(pairs),
        template=resolved.template,
        system=resolved.system,
        adapters=tuple(str(path) for path in resolved.adapter_paths),
        licenses=resolved.license,
        messages=tuple(
            (str(m.get("role", "")), str(m.get("content", ""))) for m in resolved.messages
        ),
    )
    name = resolved.name.display
    header = (
        f"# The Modelfile of {name}, as pollama stores it.\n"
        f"# To build a new model on top of this one, begin your Modelfile with:\n"
        f"# FROM {name}\n\n"
    )
    return header + modelfile.render()


def parameters_text(parameters: Mapping[str, Any]) -> str:
    """The ``parameters`` text of ``/api/show``: one ``name value`` line per value,
    names padded to a column, strings quoted."""
    lines: list[str] = []
    for key, value in sorted(parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item, ensure_ascii=False) if isinstance(item, str) else None
            lines.append(f"{key:<30} {shown or _format_value(item)}")
    return "\n".join(lines)


# -- reading values ----------------------------------------------------------------------------


def _split(text: str) -> tuple[str, bool, str]:
    """First word, whether anything follows it, and the rest (its leading space dropped)."""
    parts = text.lstrip().split(None, 1)
    if not parts:
        return "", False, ""
    return parts[0], len(parts) == 2, parts[1] if len(parts) == 2 else ""


def _read_value(lines: list[str], i: int, text: str, what: str) -> tuple[str, int]:
    """The value starting at ``text`` (the rest of line ``i``); returns it and the index
    of the line after it."""
    text = text.lstrip()
    if text.startswith(_TRIPLE):
        return _read_block(lines, i, text[len(_TRIPLE) :], what)
    if text.startswith('"'):
        return _read_quoted(lines, i, text[1:], what)
    value = text.rstrip()
    if not value:
        raise InvalidModelfile(f"{what} needs a value")
    return value, i + 1


def _read_block(lines: list[str], i: int, text: str, what: str) -> tuple[str, int]:
    parts: list[str] = []
    j = i
    while True:
        end = text.find(_TRIPLE)
        if end >= 0:
            parts.append(text[:end])
            _expect_end(text[end + len(_TRIPLE) :], j, what)
            return "".join(parts), j + 1
        parts.append(text + "\n")
        j += 1
        if j >= len(lines):
            raise InvalidModelfile(f"{what}: {_TRIPLE} opened here is never closed")
        text = lines[j]


def _read_quoted(lines: list[str], i: int, text: str, what: str) -> tuple[str, int]:
    out: list[str] = []
    j, k = i, 0
    while True:
        if k >= len(text):
            out.append("\n")
            j, k = j + 1, 0
            if j >= len(lines):
                raise InvalidModelfile(f'{what}: the " opened here is never closed')
            text = lines[j]
            continue
        char = text[k]
        if char == "\\" and k + 1 < len(text) and text[k + 1] in '"\\':
            out.append(text[k + 1])
            k += 2
        elif char == '"':
            _expect_end(text[k + 1 :], j, what)
            return "".join(out), j + 1
        else:
            out.append(char)
            k += 1


def _expect_end(rest: str, j: int, what: str) -> None:
    if rest.strip():
        raise InvalidModelfile(f"{what}: unexpected text after the closing quote on line {j + 1}")


# -- writing values ----------------------------------------------------------------------------


def _quote(value: str, *, block: bool = False) -> str:
    """A form of ``value`` that reads back to it: bare when it is one plain line,
    ``\"\"\"``-quoted for text (``block``) or multi-line values where possible, else
    ``"``-quoted with escapes."""
    plain = bool(value) and value == value.strip() and "\n" not in value
    plain = plain and not value.startswith('"')
    if plain and not block:
        return value
    # A block cannot hold \"\"\", and a trailing quote would merge with the closing ones.
    if (block or "\n" in value) and _TRIPLE not in value and not value.endswith('"'):
        return f"{_TRIPLE}{value}{_TRIPLE}"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    return json.dumps(value)
