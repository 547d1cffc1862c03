"""A model as ``pollama show`` (and the REPL's ``/show info``) describes it: pure functions
over an ``/api/show`` answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pollama.cli.format import columns
from pollama.units import format_parameter_count

SECTION_LINES = 2
"""Lines of a long text (system message, license) the summary shows."""


def summary(info: Mapping[str, Any]) -> str:
    """Sections Model, Capabilities, Parameters, System and License, each an indented
    two-column table; empty sections are left out."""
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("Model", model_rows(info)),
        ("Capabilities", [(str(cap), "") for cap in info.get("capabilities") or ()]),
        ("Parameters", parameter_rows(str(info.get("parameters") or ""))),
        ("System", [(line, "") for line in head(info.get("system"))]),
        ("License", [(line, "") for line in head(_license_text(info.get("license")))]),
    ]
    blocks = [_section(title, rows) for title, rows in sections if rows]
    return "\n\n".join(blocks) + "\n"


def model_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    model_info: Mapping[str, Any] = info.get("model_info") or {}
    details: Mapping[str, Any] = info.get("details") or {}
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    parameters = details.get("parameter_size") or ""
    count = model_info.get("general.parameter_count")
    if not parameters and isinstance(count, int):
        parameters = format_parameter_count(count)
    rows = [
        ("architecture", arch),
        ("parameters", str(parameters)),
        ("context length", _text(model_info.get(f"{arch}.context_length"))),
        ("embedding length", _text(model_info.get(f"{arch}.embedding_length"))),
        ("quantization", str(details.get("quantization_level") or "")),
    ]
    return [(key, value) for key, value in rows if value]


def parameter_rows(text: str) -> list[tuple[str, str]]:
    """``/api/show``'s parameters text (``name   value`` lines) as (name, value) pairs."""
    rows = []
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name:
            rows.append((name, value.strip()))
    return rows


def head(text: object, lines: int = SECTION_LINES) -> list[str]:
    """The first ``lines`` non-blank lines of ``text``, stripped, and ``...`` if it goes on."""
    if not isinstance(text, str):
        return []
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return kept[:lines] + (["..."] if len(kept) > lines else [])


def _license_text(value: object) -> str:
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return value if isinstance(value, str) else ""


def _section(title: str, rows: Sequence[tuple[str, str]]) -> str:
    table = columns(("", ""), rows).splitlines()[1:]  # no header row
    return "\n".join([f"  {title}", *(f"    {line}" for line in table)])


def _text(value: object) -> str:
    return "" if value is None else str(value)
