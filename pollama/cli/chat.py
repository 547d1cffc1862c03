"""One chat turn: stream ``/api/chat`` to the terminal as it arrives; the ``--verbose`` stats."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TextIO

from pollama.cli.client import Client
from pollama.cli.format import WordWrapper, go_duration, rate


@dataclass(frozen=True)
class Reply:
    content: str
    final: Mapping[str, Any] = field(default_factory=dict)
    """The last record (``done: true``): done_reason and the nanosecond metrics."""


def stream_reply(
    client: Client, body: dict[str, Any], out: TextIO, *, wrap_width: int | None = None
) -> Reply:
    """Send ``body`` to ``/api/chat`` and write the answer to ``out`` piece by piece.

    A KeyboardInterrupt (Ctrl-C) while it streams closes the response, so the
    server stops generating, and propagates to the caller.
    """
    wrapper = WordWrapper(wrap_width) if wrap_width else None
    parts: list[str] = []
    final: Mapping[str, Any] = {}
    try:
        with closing(client.chat(body)) as records:
            for record in records:
                message = record.get("message") or {}
                piece = str(message.get("content") or "")
                if piece:
                    parts.append(piece)
                    out.write(wrapper.feed(piece) if wrapper else piece)
                    out.flush()
                if record.get("done"):
                    final = record
    finally:
        if wrapper:
            out.write(wrapper.flush())
            out.flush()
    return Reply("".join(parts), final)


def load_model(client: Client, body: Mapping[str, Any]) -> None:
    """Load a model through an empty chat (no messages), as the REPL does before its
    first prompt; the answer is ``done_reason: load``."""
    request = {key: body[key] for key in ("model", "keep_alive", "options") if key in body}
    with closing(client.chat({**request, "messages": []})) as records:
        for _ in records:
            pass


def verbose_stats(final: Mapping[str, Any]) -> str:
    """Timing lines from a final record's nanosecond durations, as ``ollama run --verbose``."""

    def ns(key: str) -> int:
        value = final.get(key)
        return int(value) if isinstance(value, int | float) else 0

    prompt_count, prompt_ns = ns("prompt_eval_count"), ns("prompt_eval_duration")
    eval_count, eval_ns = ns("eval_count"), ns("eval_duration")
    rows = [
        ("total duration", go_duration(ns("total_duration"))),
        ("load duration", go_duration(ns("load_duration"))),
        ("prompt eval count", f"{prompt_count} token(s)"),
        ("prompt eval duration", go_duration(prompt_ns)),
        ("prompt eval rate", rate(prompt_count, prompt_ns)),
        ("eval count", f"{eval_count} token(s)"),
        ("eval duration", go_duration(eval_ns)),
        ("eval rate", rate(eval_count, eval_ns)),
    ]
    return "\n".join(f"{label + ':':<22}{value}" for label, value in rows)
