"""Bounds on what one request may make the server hold: body size, and per-field limits.

A body over ``POLLAMA_MAX_BODY`` is a 413 before it is read into memory: by its
``Content-Length`` at once, or, sent chunked, as soon as the bytes read pass the
limit. Blob uploads stream to disk and have their own limit (``POLLAMA_MAX_BLOB``).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pollama.api.errors import ApiError, error_body_for
from pollama.errors import PayloadTooLarge
from pollama.units import format_bytes

MAX_MESSAGES = 4096
"""Messages in one chat request."""
MAX_TEMPLATE = 256 * 1024
"""Characters of a request's or a Modelfile's template."""


class BodyLimit:
    """ASGI middleware: a request body over its limit is a 413 (``PayloadTooLarge``)."""

    def __init__(self, app: ASGIApp, *, max_body: int, max_blob: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_blob = max_blob

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.max_blob if path.startswith("/api/blobs/") else self.max_body
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            body = error_body_for(path)(ApiError(413, too_large(limit)))
            response = JSONResponse(body, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    raise PayloadTooLarge(too_large(limit))
            return message

        await self.app(scope, counted, send)


def too_large(limit: int) -> str:
    return f"request body too large (the limit is {format_bytes(limit)})"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


MAX_HEAD = 64 * 1024
"""Bytes of a request's head (request line and headers); llhttp itself takes any size."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head: past ``MAX_HEAD``
    bytes before the headers end, the answer is a 431 and the connection is closed, so a
    client cannot make the server buffer a header of any size."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._tail = b""

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Only the head counts: a chunk may carry its end and the start of a body.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if self._head_bytes > MAX_HEAD:
                self._refuse_head()
                return
            self._tail = seen[-3:]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""  # the next request

    def _refuse_head(self) -> None:
        message = b"request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + message
        )
        self.transport.close()
