"""Streaming encoders: pure async generators over typed chunks.

An error *before* the first byte becomes an HTTP status (raised to the
caller, who answers with a status code); an error *after* it can only be one
more record in the stream — ``{"error": "..."}`` for NDJSON, an ``error``
event's JSON for SSE — because the status line has already gone out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from pollama.api.errors import message_of

log = logging.getLogger(__name__)
Record = BaseModel | dict[str, Any]
T = TypeVar("T")


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when the client disconnects first; then ``work`` is
    cancelled, so a reply nobody waits for stops generating and frees its slot (a
    streamed reply learns of it from its next write; a whole one would not until done).

    The body must have been read: the next message can then only be the disconnect.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            log.info("client went away before its reply; cancelling path=%s", request.url.path)
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        return await task
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Built once: ``json.dumps`` with options builds an encoder per call (per token)."""


def encode(record: Record) -> str:
    if isinstance(record, BaseModel):
        return record.model_dump_json(exclude_none=True)
    return _ENCODE(record)


async def first_and_rest(
    records: AsyncIterator[Record],
) -> tuple[Record | None, AsyncIterator[Record]]:
    """Pull the first record so that an error before any byte can still become a status.

    Returns (None, empty) for a stream with no records.
    """
    try:
        first = await anext(records)
    except StopAsyncIteration:
        return None, records
    return first, records


async def ndjson(first: Record | None, rest: AsyncIterator[Record]) -> AsyncIterator[bytes]:
    """One JSON object per line; a failure mid-stream is a final ``{"error": ...}`` line."""
    if first is not None:
        yield (encode(first) + "\n").encode()
    try:
        async for record in rest:
            yield (encode(record) + "\n").encode()
    except Exception as exc:  # after the first byte, the status can no longer change
        log.warning("stream failed after it began: %s", exc)
        yield (json.dumps({"error": message_of(exc)}) + "\n").encode()


async def sse(
    first: Record | None,
    rest: AsyncIterator[Record],
    *,
    error: Callable[[BaseException], Record],
    done: bool = True,
) -> AsyncIterator[bytes]:
    """Server-sent events: ``data: <json>\\n\\n`` per record, ``data: [DONE]`` at the end.

    ``error`` shapes a mid-stream failure in the API's own error format.
    """
    if first is not None:
        yield f"data: {encode(first)}\n\n".encode()
    try:
        async for record in rest:
            yield f"data: {encode(record)}\n\n".encode()
    except Exception as exc:
        log.warning("stream failed after it began: %s", exc)
        yield f"data: {encode(error(exc))}\n\n".encode()
    if done:
        yield b"data: [DONE]\n\n"
