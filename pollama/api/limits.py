"""Bounds on what one request may make the server hold: body size, and per-field limits.

A body over ``POLLAMA_MAX_BODY`` is a 413 before it is read into memory: by its
``Content-Length`` at once, or, sent chunked, as soon as the bytes read pass the
limit. Blob uploads stream to disk and have their own limit (``POLLAMA_MAX_BLOB``).
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
