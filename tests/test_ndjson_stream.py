"""The lean NDJSON POST client against real sockets served by asyncio."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from pollama.llm.ndjson_stream import post_lines


@asynccontextmanager
async def _serve_once(
    respond: bytes, *, close_early: bool = False
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that reads a request, writes ``respond`` and closes; yields its port
    and a list that receives the raw request."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        for i in range(0, len(respond), 7):  # in small pieces: lines split across reads
            writer.write(respond[i : i + 7])
            await writer.drain()
        if close_early:
            writer.transport.abort()
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], seen


def _chunked(*pieces: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    return head + b"transfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


async def _collect(port: int, body: bytes = b'{"a": 1}') -> tuple[int, list[str]]:
    async with post_lines("127.0.0.1", port, "/completion", body, connect_timeout=5) as (
        status,
        lines,
    ):
        return status, [line async for line in lines]


def test_chunked_lines_are_reassembled():
    async def run() -> None:
        async with _serve_once(_chunked(b'{"x": 1}\n{"y"', b": 2}\n", b'{"z": 3}\n')) as (
            port,
            seen,
        ):
            status, lines = await _collect(port)
            assert status == 200
            assert lines == ['{"x": 1}', '{"y": 2}', '{"z": 3}']
            assert seen[0].startswith(b"POST /completion HTTP/1.1\r\n")
            assert seen[0].endswith(b'\r\n\r\n{"a": 1}')

    asyncio.run(run())


def test_content_length_body_and_error_status():
    async def run() -> None:
        error = b'{"error": "prompt too long"}'
        answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(error), error)
        async with _serve_once(answer) as (port, _):
            status, lines = await _collect(port)
            assert status == 400 and lines == [error.decode()]

    asyncio.run(run())


def test_a_connection_cut_mid_chunk_is_a_read_error():
    async def run() -> None:
        cut = _chunked(b'{"x": 1}\n' * 4)[:-20]
        async with _serve_once(cut, close_early=True) as (port, _):
            with pytest.raises(httpx.ReadError):
                await _collect(port)

    asyncio.run(run())


def test_nobody_listening_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_collect(port))


def test_the_callers_own_errors_pass_through_unchanged():
    async def run() -> None:
        async with _serve_once(_chunked(b'{"x": 1}\n')) as (port, _):
            with pytest.raises(KeyError):
                async with post_lines("127.0.0.1", port, "/", b"{}", connect_timeout=5) as (
                    _,
                    lines,
                ):
                    async for _ in lines:
                        raise KeyError("mine")

    asyncio.run(run())
