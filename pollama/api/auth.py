"""API keys and scopes, and read-only mode: who may call what.

Ollama has no authentication ("use a reverse proxy"); anybody who reaches the port
can use it. With ``POLLAMA_API_KEYS`` (or ``POLLAMA_API_KEYS_FILE``, reloaded on
SIGHUP) every route but ``/`` and ``/api/version`` needs a key:

- ``inference`` keys may generate, chat, embed, use the ``/v1`` routes and read
  ``/api/tags``, ``/api/show``, ``/api/ps``;
- ``admin`` keys may do that and change the store (create, copy, delete, pull, push,
  blobs) and read ``/metrics`` (unless ``POLLAMA_METRICS_PUBLIC``).

A key comes as ``Authorization: Bearer KEY`` or, for the Anthropic clients,
``x-api-key: KEY``. No key or an unknown one is a 401, a key out of its scope a
403, in the error shape of the API the path belongs to. Keys are compared in
constant time and never logged. ``POLLAMA_READ_ONLY`` refuses every change to the
store (403) whatever the key. Without keys nothing is checked, as in Ollama.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from enum import IntEnum
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pollama.api.errors import ApiError, error_body_for
from pollama.errors import BadRequest

log = logging.getLogger(__name__)


class KeyScope(IntEnum):
    """What a key may do; a larger scope includes the smaller."""

    INFERENCE = 1
    ADMIN = 2


PUBLIC = frozenset({"/", "/api/version"})
_INFERENCE_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
    }
)
_STORE_CHANGES = ("/api/create", "/api/copy", "/api/delete", "/api/pull", "/api/push")


class InvalidKeys(BadRequest):
    """A key list that does not parse (a setting, reported at start-up)."""


def parse_keys(entries: Iterable[str]) -> dict[str, KeyScope]:
    """``KEY`` or ``KEY:SCOPE`` entries (blank ones and ``#`` comments skipped) as a
    mapping; a key without a scope is ``admin``."""
    keys: dict[str, KeyScope] = {}
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key, _, scope = entry.partition(":")
        try:
            keys[key.strip()] = KeyScope[scope.strip().upper() or "ADMIN"]
        except KeyError:
            raise InvalidKeys(
                f"unknown API key scope {scope.strip()!r} (expected inference or admin)"
            ) from None
    return keys


def required_scope(method: str, path: str, *, metrics_public: bool = False) -> KeyScope | None:
    """The scope a request needs; None for the public health routes."""
    if path in PUBLIC or (path == "/metrics" and metrics_public):
        return None
    if path == "/metrics" or path.startswith("/api/blobs/") or path in _STORE_CHANGES:
        return KeyScope.ADMIN
    return KeyScope.INFERENCE  # the inference routes, and any other path: no key, no answer


def changes_store(method: str, path: str) -> bool:
    """Whether a request would change the model store (refused in read-only mode)."""
    if path.startswith("/api/blobs/"):
        return method not in ("HEAD", "GET")
    return path in _STORE_CHANGES


class KeyRing:
    """The keys in force: from the environment and, reloadable, from a file."""

    def __init__(self, inline: Mapping[str, KeyScope], path: Path | None = None) -> None:
        self._inline = dict(inline)
        self._path = path
        self._keys = dict(inline)
        self.reload()

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._path is not None

    def reload(self) -> None:
        """Read the key file again (on SIGHUP); a file that cannot be read keeps the old keys."""
        if self._path is None:
            return
        try:
            from_file = parse_keys(self._path.read_text().splitlines())
        except (OSError, InvalidKeys) as exc:
            log.error("API keys not reloaded path=%s error=%s", self._path, exc)
            return
        self._keys = {**self._inline, **from_file}
        log.info("API keys loaded path=%s count=%d", self._path, len(self._keys))

    def scope_of(self, presented: str) -> KeyScope | None:
        """The scope of the presented key, compared in constant time against every key."""
        found: KeyScope | None = None
        given = presented.encode()
        for key, scope in self._keys.items():
            if hmac.compare_digest(key.encode(), given):
                found = scope
        return found


class Guard:
    """ASGI middleware: API keys and read-only mode, before anything else of the app."""

    def __init__(
        self, app: ASGIApp, *, keys: KeyRing, read_only: bool, metrics_public: bool
    ) -> None:
        self.app = app
        self.keys = keys
        self.read_only = read_only
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)  # CORS preflights carry no credentials
            return
        method, path = scope["method"], scope["path"]
        refusal = self._refusal(method, path, _presented(scope))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = error_body_for(path)(refusal)
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
        await JSONResponse(body, status_code=refusal.status, headers=headers)(scope, receive, send)

    def _refusal(self, method: str, path: str, presented: str | None) -> ApiError | None:
        if self.read_only and changes_store(method, path):
            return ApiError(
                403, "this server is read-only (POLLAMA_READ_ONLY): the store cannot change"
            )
        if not self.keys.enabled:
            return None
        needed = required_scope(method, path, metrics_public=self.metrics_public)
        if needed is None:
            return None
        if presented is None:
            return ApiError(401, "an API key is required (Authorization: Bearer <key>)")
        granted = self.keys.scope_of(presented)
        if granted is None:
            return ApiError(401, "invalid API key")
        if granted < needed:
            return ApiError(403, f"this API key may not use {path} (it needs the admin scope)")
        return None


def _presented(scope: Scope) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    headers = dict(scope.get("headers") or ())
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    kind, _, token = authorization.partition(" ")
    if kind.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None
