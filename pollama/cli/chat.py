"""One chat turn: stream ``/api/chat`` to the terminal as it arrives; the ``--verbose`` stats."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console

from pollama.cli.client import Client
from pollama.cli.format import WordWrapper, go_duration, rate

SPINNER_REFRESH = 0.1
"""Seconds between progress polls while a model loads."""


@dataclass(frozen=True)
class Answer:
    content: str
    final: Mapping[str, Any] = field(default_factory=dict)
    """The last record (``done: true``): done_reason and the nanosecond metrics."""


def stream_reply(
    client: Client, body: dict[str, Any], out: TextIO, *, wrap_width: int | None = None
) -> Answer:
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
    return Answer("".join(parts), final)


def load_model(client: Client, body: Mapping[str, Any], progress: TextIO | None = None) -> None:
    """Load a model through an empty chat (no messages), as the REPL does before its
    first prompt; the answer is ``done_reason: load``. With ``progress`` (a terminal),
    a spinner there shows how far the runner has read the model."""
    request = {key: body[key] for key in ("model", "keep_alive", "options") if key in body}

    def load() -> None:
        with closing(client.chat({**request, "messages": []})) as records:
            for _ in records:
                pass

    if progress is None:
        load()
        return
    _with_spinner(client, str(body.get("model", "")), load, progress)


def _with_spinner(client: Client, model: str, load: Callable[[], None], out: TextIO) -> None:
    """Run ``load`` on a worker thread while this one shows the server's load progress."""
    failure: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            load()
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, daemon=True).start()
    names = {model, model if ":" in model else f"{model}:latest"}
    with Console(file=out).status(f"loading {model}") as status:
        # A display refresh, not synchronisation: the thread's end is what we wait for.
        while not done.wait(SPINNER_REFRESH):
            try:
                loading = client.loading()
            except Exception:  # the display is best-effort; the load reports its errors
                continue
            fraction = next((p for name, p in loading.items() if name in names), None)
            if fraction is not None:
                status.update(f"loading {model} {fraction:.0%}")
    if failure:
        raise failure[0]


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
    drafted, accepted = ns("draft_count"), ns("draft_accepted_count")
    if drafted:
        rows.append(("draft acceptance", f"{accepted}/{drafted} ({accepted / drafted:.0%})"))
    return "\n".join(f"{label + ':':<22}{value}" for label, value in rows)
