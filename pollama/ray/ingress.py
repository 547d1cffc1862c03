"""The ingress: every HTTP request Ray's proxy receives, relayed to a replica.

It reads the body once, derives the routing hint (``affinity.hint_for``), and calls
the replicas' ``forward`` as a stream: the router picks the replica, the replica
relays to its ``pollama serve``, and the response streams back byte for byte (status,
headers, then each chunk as the server wrote it), with ``x-pollama-replica`` naming
the replica that served it. A replica that dies before it answers is a 503; one
that dies mid-stream ends the stream with an error in the stream's own framing
(an NDJSON ``{"error": …}`` line, or an SSE ``error`` event), as a server whose
runner died mid-reply does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pollama.ray.affinity import hint_for
from pollama.ray.metrics import board, merge

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-pollama-replica"


class PollamaIngress:
    """Ray Serve's ingress deployment for pollama (``app`` wraps it)."""

    def __init__(self, replicas: Any) -> None:
        self._replicas = replicas.options(stream=True)
        self._board: Any = None

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        hint = hint_for(body, request.headers.get("content-type", "application/json"))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        stream = self._replicas.forward.remote(
            request.method,
            path,
            list(request.headers.items()),
            body,
            hint={"model": hint.model, "prefix": hint.prefix},
        )
        try:
            head = await stream.__anext__()
        except Exception as exc:  # noqa: BLE001 - whatever ended the replica, say so
            log.warning("replica failed before answering: path=%s error=%s", path, exc)
            return JSONResponse(
                {"error": f"the replica serving this request failed: {_reason(exc)}"},
                status_code=503,
            )
        if request.method == "GET" and request.url.path == "/metrics" and head["status"] == 200:
            return await self._all_metrics(stream)  # a replica said yes (keys): all of them
        headers = dict(head["headers"])
        headers[REPLICA_HEADER] = head["replica"]
        media_type = headers.pop("content-type", None)
        return StreamingResponse(
            _relay(stream, media_type or ""),
            status_code=head["status"],
            headers=headers,
            media_type=media_type,
        )

    async def _all_metrics(self, stream: Any) -> Response:
        async for _ in stream:  # that replica's own answer: every replica's follows
            pass
        if self._board is None:
            self._board = board()
        texts = await self._board.texts.remote()
        return Response(merge(texts), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _relay(stream: Any, media_type: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - the replica died mid-stream
        log.warning("replica failed mid-stream: error=%s", exc)
        yield _stream_error(media_type, f"the replica serving this request failed: {_reason(exc)}")
    finally:
        stream.cancel()  # the client left (or all is sent): the replica stops too


def _stream_error(media_type: str, message: str) -> bytes:
    """An error in the framing of the stream it ends."""
    if "event-stream" in media_type:
        return f"event: error\ndata: {json.dumps({'error': {'message': message}})}\n\n".encode()
    if "ndjson" in media_type or "json" in media_type:
        return (json.dumps({"error": message}) + "\n").encode()
    return b""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
