"""What the Anthropic Messages and OpenAI Responses APIs share: blocks and named events.

Both APIs report a reply as a list of blocks (Anthropic's content blocks, the
Responses API's output items), each of one kind, in the order the model wrote
them: thinking, then text, then tool calls, typically. ``blocks`` turns a run's
deltas into that shape::

    Opened(kind) Piece… Closed(kind, text) | CallOut | …   then the run's Finish

A new block starts whenever the kind changes. Whitespace alone does not open a
block (a model's newline between its thinking and a tool call is not an answer):
it is held until text of the same kind follows, and dropped otherwise.

Both stream server-sent events with a name, ``event: <type>\\ndata: <json>\\n\\n``,
where the JSON's ``type`` is the event's name; ``named_sse`` frames them, with an
``error`` event for a failure after the first byte.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from pollama.api.completion import CallOut, Delta, Event, Finish
from pollama.api.errors import CLIENT_CLOSED_REQUEST
from pollama.api.streaming import Record as AnyRecord
from pollama.api.streaming import encode, first_and_rest, unless_client_leaves

log = logging.getLogger(__name__)

SSE = "text/event-stream"
Kind = Literal["thinking", "text"]
Record = dict[str, Any]


@dataclass(frozen=True)
class Opened:
    kind: Kind


@dataclass(frozen=True)
class Piece:
    kind: Kind
    text: str


@dataclass(frozen=True)
class Closed:
    kind: Kind
    text: str
    """The whole block."""


Block = Opened | Piece | Closed | CallOut | Finish


class EventStream(Protocol):
    """A reply that is built as its events are drawn."""

    def events(self) -> AsyncIterator[Record]: ...

    def error(self, exc: BaseException) -> Record:
        """A failure after the first byte as the API's ``error`` event."""
        ...


async def blocks(events: AsyncIterator[Event]) -> AsyncGenerator[Block, None]:
    """A run's events as blocks (see the module docstring); closes ``events`` when done."""
    open_kind: Kind | None = None
    written: list[str] = []
    held_kind: Kind | None = None
    held = ""
    try:
        async for event in events:
            if isinstance(event, Finish):
                if open_kind is not None:
                    yield Closed(open_kind, "".join(written))
                yield event
                return
            kind, text = _text_of(event)
            if kind is None:
                if not event.tool_calls:
                    continue  # logprobs alone: no block of their own
                if open_kind is not None:
                    yield Closed(open_kind, "".join(written))
                open_kind, held_kind, held = None, None, ""
                for call in event.tool_calls:
                    yield call
                continue
            if kind == open_kind:
                written.append(text)
                yield Piece(kind, text)
                continue
            if not text.strip():
                held = held + text if held_kind == kind else text
                held_kind = kind
                continue
            if open_kind is not None:
                yield Closed(open_kind, "".join(written))
            text = (held if held_kind == kind else "") + text
            open_kind, held_kind, held, written = kind, None, "", [text]
            yield Opened(kind)
            yield Piece(kind, text)
    finally:
        await _close(events)


async def block_records(
    events: AsyncIterator[Event],
    opening: Callable[[], list[Record]],
    records: Callable[[Block], list[Record]],
) -> AsyncIterator[Record]:
    """A reply's records: ``opening()``'s, then each block's ``records``. The first block
    is awaited before anything is yielded, so a failure while the prompt is read can
    still be answered with an HTTP status."""
    source = blocks(events)
    try:
        first = await anext(source)
        for record in [*opening(), *records(first)]:
            yield record
        async for block in source:
            for record in records(block):
                yield record
    finally:
        await source.aclose()


def _text_of(delta: Delta) -> tuple[Kind | None, str]:
    """The delta's kind and text; (None, "") for tool calls and for logprobs alone."""
    if delta.thinking:
        return "thinking", delta.thinking
    if delta.content:
        return "text", delta.content
    return None, ""


async def _close(events: AsyncIterator[Any]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def frame(record: AnyRecord) -> bytes:
    """One named server-sent event: the record's ``type`` names it."""
    kind = record["type"] if isinstance(record, dict) else getattr(record, "type", "")
    return f"event: {kind}\ndata: {encode(record)}\n\n".encode()


async def named_sse(
    first: AnyRecord | None,
    rest: AsyncIterator[AnyRecord],
    *,
    error: Callable[[BaseException], AnyRecord],
) -> AsyncIterator[bytes]:
    """Named server-sent events, no ``[DONE]``; a failure after the first byte is one
    more event, ``error(exc)``, in the API's own shape (its ``type`` is ``error``)."""
    try:
        if first is not None:
            yield frame(first)
        async for record in rest:
            yield frame(record)
    except Exception as exc:  # after the first byte, the status can no longer change
        log.warning("stream failed after it began: %s", exc)
        yield frame(error(exc))
    finally:
        await _close(rest)


async def _drain(reply: EventStream) -> bool:
    async for _ in reply.events():
        pass
    return True


async def event_stream(reply: EventStream) -> AsyncIterator[bytes]:
    """The reply as named events. What fails before the first event is raised here, so
    that it can still be answered with an HTTP status."""
    first, rest = await first_and_rest(reply.events())
    return named_sse(first, rest, error=reply.error)


async def respond(
    request: Request, reply: EventStream, stream: bool, result: Callable[[], BaseModel]
) -> Response:
    """Named events when streaming; otherwise the reply drained and ``result()`` as JSON
    (the same run either way, so both forms always agree), cancelled if the client leaves."""
    if not stream:
        if await unless_client_leaves(request, _drain(reply)) is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(result().model_dump(mode="json"))
    stream_ = await event_stream(reply)
    return StreamingResponse(stream_, media_type=SSE, headers={"Cache-Control": "no-cache"})
