"""Stream framing, checked on the exact bytes (STYLE rule 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from pollama.api.errors import status_of
from pollama.api.streaming import first_and_rest, ndjson, sse
from pollama.errors import (
    InsertUnsupported,
    InvalidFormat,
    ModelNotFound,
    QueueFull,
    RunnerDied,
    RunnerHTTPError,
    UnsupportedSchema,
)


class Chunk(BaseModel):
    response: str
    done: bool = False
    thinking: str | None = None


async def source(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in stream])


def run_ndjson(items: list[Any]) -> bytes:
    async def go() -> bytes:
        first, rest = await first_and_rest(source(items))
        return await collect(ndjson(first, rest))

    return asyncio.run(go())


def test_ndjson_lines_are_compact_and_omit_none():
    out = run_ndjson([Chunk(response="Hé"), {"done": True, "total_duration": 5}])
    assert out == b'{"response":"H\xc3\xa9","done":false}\n{"done":true,"total_duration":5}\n'
    for line in out.splitlines():
        json.loads(line)


def test_error_before_the_first_byte_reaches_the_caller():
    async def go() -> None:
        await first_and_rest(source([ModelNotFound("x")]))

    with pytest.raises(ModelNotFound):
        asyncio.run(go())


def test_error_after_the_first_byte_is_a_final_line():
    out = run_ndjson([Chunk(response="a"), RunnerDied("llama runner process has terminated")])
    lines = out.splitlines()
    assert json.loads(lines[0]) == {"response": "a", "done": False}
    assert json.loads(lines[-1]) == {"error": "llama runner process has terminated"}
    assert len(lines) == 2


def test_unexpected_errors_do_not_leak_internals():
    out = run_ndjson([Chunk(response="a"), KeyError("secret/path")])
    assert json.loads(out.splitlines()[-1]) == {"error": "internal error"}


def test_sse_framing_and_done():
    async def go(items: list[Any]) -> bytes:
        first, rest = await first_and_rest(source(items))
        shaped = sse(first, rest, error=lambda e: {"error": {"message": str(e)}})
        return await collect(shaped)

    out = asyncio.run(go([{"a": 1}, {"b": 2}]))
    assert out == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    failed = asyncio.run(go([{"a": 1}, InvalidFormat("bad")]))
    events = failed.split(b"\n\n")
    assert events[1] == b'data: {"error":{"message":"bad"}}'
    assert events[2] == b"data: [DONE]"
    assert b"data: \n" not in out and b"data: \n" not in failed


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ModelNotFound("m"), 404),
        (QueueFull(), 503),
        (InvalidFormat("invalid format"), 400),
        (InsertUnsupported("smollm2"), 400),
        (UnsupportedSchema("not"), 400),
        (RunnerHTTPError("prompt too long", 400), 400),
        (RunnerHTTPError("boom", 500), 500),
        (RunnerDied("gone"), 500),
        (asyncio.CancelledError(), 499),
        (RuntimeError("x"), 500),
    ],
)
def test_statuses(exc: BaseException, status: int):
    assert status_of(exc) == status
