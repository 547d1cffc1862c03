"""The one place that maps pollama's exceptions to HTTP statuses.

Clients depend on these: the official ``ollama`` client looks for a 404 whose
message contains "not found" before offering to pull; 503 tells it to retry
later; 499 is a request the client itself canceled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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


# -- each API's own error shape ------------------------------------------------------------

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def ollama_body(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


def openai_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if status == 404 and "model" in message else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body_for(path: str) -> Callable[[int, str], dict[str, Any]]:
    """The error shape of the API a request path belongs to."""
    if path.startswith("/v1/messages"):
        return anthropic_body
    if path.startswith("/v1/"):
        return openai_body
    return ollama_body


def error_record(exc: BaseException, shape: Callable[[int, str], dict[str, Any]]) -> dict[str, Any]:
    """A mid-stream failure as one record in the API's own shape."""
    return shape(status_of(exc), message_of(exc))
