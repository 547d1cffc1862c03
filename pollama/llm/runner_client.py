"""An httpx client for one runner's loopback protocol (``pollama.protocol.wire``).

It speaks the wire format and nothing else: it does not know whether the
runner process is alive. Every failure is either an ``httpx.TransportError``
(the connection broke; ``LlamaServer`` decides whether the runner died) or a
``RunnerHTTPError`` (the runner answered with a 4xx/5xx and a message).

Tests substitute the transport (``httpx.MockTransport``) through the
constructor; ``LlamaServer`` takes a factory of these clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from pollama.errors import RunnerHTTPError
from pollama.llm.ndjson_stream import post_lines
from pollama.protocol.wire import (
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    LoadRequest,
    LoadResponse,
    ProtocolError,
    RerankRequest,
    RerankResponse,
)

HEALTH_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0


class RunnerClient:
    """One runner at ``http://127.0.0.1:{port}``."""

    def __init__(
        self,
        port: int,
        *,
        load_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.port = port
        self._load_timeout = load_timeout
        # The token stream takes the lean path unless a test substitutes the transport.
        self._lean_stream = transport is None
        # No read timeout by default: a generation may pause as long as the model
        # needs; liveness is the reaper's job, not a timer's.
        self._http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
            transport=transport,
            # Plain HTTP over loopback: no TLS context, whose CA bundle took 35-60 ms of
            # every runner start (the first reply and each model swap wait for it).
            verify=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> Health:
        response = await self._http.get("/health", timeout=HEALTH_TIMEOUT)
        return Health.from_json(_json(response))

    async def info(self) -> list[dict[str, Any]]:
        response = await self._http.get("/info", timeout=HEALTH_TIMEOUT)
        devices = _json(response).get("devices", [])
        return [dict(d) for d in devices] if isinstance(devices, list) else []

    async def load(self, request: LoadRequest) -> LoadResponse:
        timeout = httpx.Timeout(self._load_timeout, connect=CONNECT_TIMEOUT)
        response = await self._http.post("/load", json=request.to_json(), timeout=timeout)
        return LoadResponse.from_json(_json(response))

    @asynccontextmanager
    async def completion(self, request: CompletionRequest) -> AsyncIterator[AsyncIterator[str]]:
        """The NDJSON lines of a completion, as they arrive. Leaving the context closes
        the connection, which is how the runner learns that the client went away."""
        if self._lean_stream:
            body = json.dumps(request.to_json()).encode()
            async with post_lines(
                "127.0.0.1", self.port, "/completion", body, connect_timeout=CONNECT_TIMEOUT
            ) as (status, lines):
                if status >= 400:
                    raise _http_error(status, "".join([line async for line in lines]))
                yield lines
            return
        async with self._http.stream("POST", "/completion", json=request.to_json()) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for_status(response)
            yield response.aiter_lines()

    async def embedding(self, inputs: Sequence[str], truncate: bool) -> EmbeddingResponse:
        body = EmbeddingRequest(tuple(inputs), truncate).to_json()
        response = await self._http.post("/embedding", json=body)
        return EmbeddingResponse.from_json(_json(response))

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResponse:
        body = RerankRequest(query, tuple(documents)).to_json()
        response = await self._http.post("/rerank", json=body)
        return RerankResponse.from_json(_json(response))

    async def tokenize(self, text: str, add_special: bool) -> list[int]:
        body = {"content": text, "add_special": add_special}
        response = await self._http.post("/tokenize", json=body)
        tokens = _json(response).get("tokens")
        if not isinstance(tokens, list):
            raise ProtocolError("bad tokenize response: no tokens")
        return [int(t) for t in tokens]

    async def detokenize(self, tokens: Sequence[int]) -> str:
        response = await self._http.post("/detokenize", json={"tokens": list(tokens)})
        content = _json(response).get("content")
        if not isinstance(content, str):
            raise ProtocolError("bad detokenize response: no content")
        return content


def _json(response: httpx.Response) -> dict[str, Any]:
    _raise_for_status(response)
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"runner sent a body that is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("runner sent a JSON body that is not an object")
    return body


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise _http_error(response.status_code, response.text)


def _http_error(status: int, text: str) -> RunnerHTTPError:
    """The runner's ``{"error": ...}`` answer (or its text) as an exception."""
    message = ""
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            message = str(body.get("error", "") or "")
    except json.JSONDecodeError:
        message = text.strip()[:500]
    return RunnerHTTPError(message or f"runner answered HTTP {status}", status)
