"""The one place that maps pollama's exceptions to HTTP statuses.

Clients depend on these: the official ``ollama`` client looks for a 404 whose
message contains "not found" before offering to pull; 503 tells it to retry
later; 499 is a request the client itself canceled.
"""

from __future__ import annotations

import asyncio

from pollama.errors import (
    BadRequest,
    DigestMismatch,
    InsertUnsupported,
    InvalidDigest,
    InvalidFormat,
    InvalidModelFile,
    InvalidModelfile,
    InvalidModelName,
    InvalidTemplate,
    ModelNotFound,
    PollamaError,
    QueueFull,
    RunnerHTTPError,
)

CLIENT_CLOSED_REQUEST = 499

_BAD_REQUEST: tuple[type[Exception], ...] = (
    BadRequest,
    InsertUnsupported,
    InvalidFormat,
    InvalidModelName,
    InvalidDigest,
    DigestMismatch,
    InvalidModelfile,
    InvalidModelFile,
    InvalidTemplate,
)


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request."""
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(exc, QueueFull):
        return 503
    if isinstance(exc, _BAD_REQUEST):
        return 400
    if isinstance(exc, RunnerHTTPError) and 400 <= exc.status < 500:
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    # Load failures (InsufficientMemory, LoadError), a dead runner, anything else.
    return 500


def message_of(exc: BaseException) -> str:
    """What the client is told. Unexpected exceptions do not leak internals."""
    if isinstance(exc, PollamaError | ValueError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.CancelledError):
        return "request canceled"
    return "internal error"
