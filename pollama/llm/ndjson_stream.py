"""A lean HTTP/1.1 POST whose answer is read as NDJSON lines: the runner's completion stream.

Every generated token crosses this path once, and on a CPU-only machine every
microsecond the server spends here is taken from llama.cpp's compute threads.
httpx's general machinery (httpcore, anyio, h11) cost about 0.3 ms per token;
plain asyncio streams with a chunked-encoding reader cost a fraction of it.
Only this one hot path uses it. It speaks httpx's exception vocabulary (a
broken connection is an ``httpx.TransportError``), so callers handle both
clients alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx

MAX_HEADER_LINE = 64 * 1024


@asynccontextmanager
async def post_lines(
    host: str, port: int, path: str, body: bytes, *, connect_timeout: float
) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
    """POST ``body`` (JSON) and yield ``(status, lines)``; leaving closes the connection.

    For a status of 400 or more, ``lines`` yields the whole body as one string.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_HEADER_LINE), connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        with _broken_connection():
            status, chunked, length = await _read_head(reader)
        read = _whole if status >= 400 else _lines
        yield status, read(reader, chunked, length)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.contextmanager
def _broken_connection() -> Iterator[None]:
    """Reading failures as httpx's: only the reading, never the caller's own errors."""
    try:
        yield
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise httpx.ReadError(f"runner connection broke: {exc!r}") from exc


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, int | None]:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    chunked, length = False, None
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length":
            length = int(value.strip())
    return status, chunked, length


async def _chunks(
    reader: asyncio.StreamReader, chunked: bool, length: int | None
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive, with chunked transfer-encoding removed."""
    if not chunked:
        if length is not None:
            if length:
                yield await reader.readexactly(length)
            return
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise asyncio.IncompleteReadError(b"", None)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _lines(
    reader: asyncio.StreamReader, chunked: bool, length: int | None
) -> AsyncIterator[str]:
    pending = b""
    chunks = _chunks(reader, chunked, length)
    while True:
        with _broken_connection():
            data = await anext(chunks, None)
            if data is None:
                break
            pending += data
            if b"\n" not in pending:
                continue
            *complete, pending = pending.split(b"\n")
            decoded = [line.decode() for line in complete]
        for line in decoded:
            yield line
    if pending.strip():
        with _broken_connection():
            last = pending.decode()
        yield last


async def _whole(
    reader: asyncio.StreamReader, chunked: bool, length: int | None
) -> AsyncIterator[str]:
    yield b"".join([data async for data in _chunks(reader, chunked, length)]).decode(
        errors="replace"
    )
