"""The one place that maps pollama's exceptions to HTTP statuses.

Clients depend on these: the official ``ollama`` client looks for a 404 whose
message contains "not found" before offering to pull; 503 tells it to retry
later; 499 is a request the client itself canceled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
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
    PayloadTooLarge,
    PollamaError,
    QueueFull,
    RegistryError,
    RunnerHTTPError,
    StorageFull,
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
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, StorageFull):
        return 507
    if isinstance(exc, _BAD_REQUEST):
        return 400
    if isinstance(exc, RegistryError):
        return 502  # the registry failed us, not the client and not pollama
    if isinstance(exc, RunnerHTTPError) and 400 <= exc.status < 500:
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    # Load failures (InsufficientMemory, LoadError), a dead runner, anything else.
    return 500


def message_of(exc: BaseException) -> str:
    """What the client is told. Only our own errors are written for the client; anything
    else is a bug of ours, logged with its traceback, and never leaks internals."""
    if isinstance(exc, PollamaError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.CancelledError):
        return "request canceled"
    return "internal error"


@dataclass(frozen=True)
class ApiError:
    """An error as every API reports it; each API writes it in its own shape."""

    status: int
    message: str
    code: str | None = None
    """A machine-readable code where an API has one (OpenAI's ``model_not_found``)."""


def api_error(exc: BaseException) -> ApiError:
    code = "model_not_found" if isinstance(exc, ModelNotFound) else None
    return ApiError(status_of(exc), message_of(exc), code)


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


def ollama_body(error: ApiError) -> dict[str, Any]:
    return {"error": error.message}


def openai_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    default = "api_error" if error.status >= 500 else "invalid_request_error"
    kind = _OPENAI_TYPES.get(error.status, default)
    return {"error": {"message": error.message, "type": kind, "param": None, "code": error.code}}


def anthropic_body(error: ApiError) -> dict[str, Any]:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


ErrorShape = Callable[[ApiError], dict[str, Any]]


def error_body_for(path: str) -> ErrorShape:
    """The error shape of the API a request path belongs to."""
    if path.startswith("/v1/messages"):
        return anthropic_body
    if path.startswith("/v1/"):
        return openai_body
    return ollama_body


def error_record(exc: BaseException, shape: ErrorShape) -> dict[str, Any]:
    """A mid-stream failure as one record in the API's own shape."""
    return shape(api_error(exc))
