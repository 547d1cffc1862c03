"""The errors the engine answers with (``state`` re-exports them for its users)."""

from __future__ import annotations

from pollama.errors import PollamaError


class EngineError(PollamaError):
    """A request the engine refuses or cannot serve; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class AllocationFailed(EngineError):
    """llama.cpp could not allocate a buffer: the load loop may back off and retry.

    Any other load failure (an unknown architecture, a damaged file) is final and
    answered as an HTTP error, so the server does not retry what cannot work.
    """
