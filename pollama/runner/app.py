"""The runner's HTTP face: the protocol endpoints over the engine, on 127.0.0.1 only.

Plain Starlette routes, not FastAPI: the wire types validate themselves
(``protocol.wire``), and FastAPI's import would add 0.2 s and 15 MiB to every runner
and to the idle spare."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio._backends._asyncio  # noqa: F401 - see below
import uvicorn
import uvicorn.protocols.http.httptools_impl  # noqa: F401 - see below
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pollama import devices
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingRequest,
    LoadRequest,
    ProtocolError,
    RerankRequest,
    memory_to_json,
)
from pollama.runner.engine import Engine, StepHooks
from pollama.runner.outbox import Outbox, Stream
from pollama.runner.state import EngineError
from pollama.runner.state import Request as EngineRequest

log = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"
Item = CompletionChunk | CompletionDone | EngineError
"""What the engine sends a completion's stream."""

# anyio's asyncio backend (the first streamed reply's task group) and uvicorn's HTTP
# protocol are imported by their first use; a spare imports them here instead, while it
# waits for its model, not after it, when ~15 ms more would delay the first reply.


def create_app(engine: Engine) -> Starlette:
    return Starlette(
        routes=[*_status_routes(engine), *_model_routes(engine), _completion_route(engine)],
        exception_handlers=_error_handlers(),
    )


def _error_handlers() -> dict[Any, Any]:
    """Errors as ``{"error": …}`` with their status, as the server's client expects."""

    async def engine_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def protocol_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    return {EngineError: engine_error, ProtocolError: protocol_error}


def _status_routes(engine: Engine) -> list[Route]:
    """What the server polls: health, stats, measured memory, and the devices seen."""

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(engine.health().to_json())

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(engine.stats().to_json())

    async def memory(_: Request) -> JSONResponse:
        """The loaded model's measured memory: what the server reports in /api/ps."""
        measured = engine.memory()
        if measured is None:
            return JSONResponse({"error": "no model loaded"}, status_code=404)
        return JSONResponse(memory_to_json(measured))

    async def info(_: Request) -> JSONResponse:
        gpus = devices.nvidia_gpus() + devices.amd_gpus()
        return JSONResponse(
            {
                "devices": [
                    {
                        "library": g.library,
                        "id": g.id.id,
                        "name": g.name,
                        "total": g.total_memory,
                        "free": g.free_memory,
                    }
                    for g in gpus
                ]
            }
        )

    return [
        Route("/health", health),
        Route("/stats", stats),
        Route("/memory", memory),
        Route("/info", info),
    ]


def _model_routes(engine: Engine) -> list[Route]:
    """Loading, tokens, embeddings and rerank scores: each one call on the engine thread."""

    async def load(request: Request) -> JSONResponse:
        body = LoadRequest.from_json(await _json(request))
        response = await asyncio.wrap_future(engine.call(lambda: engine.load(body)))
        return JSONResponse(response.to_json())

    async def tokenize(request: Request) -> JSONResponse:
        body = await _json(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise ProtocolError("content must be a string")
        add_special = bool(body.get("add_special", True))
        tokens = await asyncio.wrap_future(
            engine.call(lambda: engine.tokenize(content, add_special))
        )
        return JSONResponse({"tokens": tokens})

    async def detokenize(request: Request) -> JSONResponse:
        body = await _json(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ProtocolError("tokens must be a list of integers")
        content = await asyncio.wrap_future(engine.call(lambda: engine.detokenize(tokens)))
        return JSONResponse({"content": content})

    async def embedding(request: Request) -> JSONResponse:
        body = EmbeddingRequest.from_json(await _json(request))
        texts = list(body.content)
        result = await asyncio.wrap_future(engine.call(lambda: engine.embed(texts, body.truncate)))
        return JSONResponse(result.to_json())

    async def rerank(request: Request) -> JSONResponse:
        body = RerankRequest.from_json(await _json(request))
        documents = list(body.documents)
        scores = await asyncio.wrap_future(
            engine.call(lambda: engine.rerank(body.query, documents))
        )
        return JSONResponse(scores.to_json())

    return [
        Route(path, handler, methods=["POST"])
        for path, handler in (
            ("/load", load),
            ("/tokenize", tokenize),
            ("/detokenize", detokenize),
            ("/embedding", embedding),
            ("/rerank", rerank),
        )
    ]


def _completion_route(engine: Engine) -> Route:
    outboxes: list[Outbox[Item]] = []

    async def completion(request: Request) -> Response:
        if not outboxes:  # the first request runs on the loop that serves them all
            outboxes.append(Outbox(asyncio.get_running_loop()))
            engine.set_step_hooks(StepHooks(outboxes[0].hold, outboxes[0].flush))
        return await _complete(engine, outboxes[0], request)

    return Route("/completion", completion, methods=["POST"])


async def _complete(engine: Engine, outbox: Outbox[Item], request: Request) -> Response:
    """Submit the completion; stream its chunks as NDJSON once the first one is there."""
    body = CompletionRequest.from_json(await _json(request))
    items = outbox.stream()
    work = EngineRequest(body, partial(outbox.put, items))
    engine.submit(work)
    first = await _first_items(request, items, work)
    if first is None:
        return Response(status_code=499)  # the client left before the first token
    if isinstance(first[0], EngineError):
        # Nothing streamed yet: the error gets its own status code.
        return JSONResponse({"error": str(first[0])}, status_code=first[0].status)
    return StreamingResponse(_stream(first, items, work), media_type=NDJSON)


async def _first_items(
    request: Request, items: Stream[Item], work: EngineRequest
) -> list[Item] | None:
    """The first things the engine sends, or None if the client disconnects first.

    Prompt evaluation can take a while; a client that gives up meanwhile must
    free its slot then, not when the first token would have been sent.
    """
    first = asyncio.ensure_future(items.take())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not first.done():
            first.cancel()
            work.cancelled.set()
    return first.result() if first.done() and not first.cancelled() else None


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    first: list[Item], items: Stream[Item], work: EngineRequest
) -> AsyncIterator[bytes]:
    """One write per take: the tokens of every step since the last write, in order."""
    batch = first
    try:
        while True:
            lines, last = _lines(batch)
            yield lines
            if last:
                return
            batch = await items.take()
    finally:
        # Client gone (or stream done): the engine frees the slot at its next step.
        work.cancelled.set()


def _lines(batch: list[Item]) -> tuple[bytes, bool]:
    """The batch as NDJSON, and whether it ends the stream (done or an error)."""
    out = []
    for item in batch:
        if isinstance(item, EngineError):
            out.append(_line({"error": str(item)}))
            return b"".join(out), True
        out.append(_line(item.to_json()))
        if isinstance(item, CompletionDone):
            return b"".join(out), True
    return b"".join(out), False


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
"""Built once: ``json.dumps`` with separators builds an encoder per call (per token)."""


def _line(body: dict[str, Any]) -> bytes:
    return _ENCODE(body).encode() + b"\n"


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    return body


def serve(
    model: str,
    port: int,
    *,
    verbose: bool = False,
    test_crash: str = "",
    sock: socket.socket | None = None,
) -> None:
    """Run the runner until terminated. Loopback only: the runner trusts its caller.
    ``sock``: already bound to ``port`` and listening (a spare holds its port while idle)."""
    engine = Engine(model, verbose=verbose, test_crash=test_crash)
    engine.start()
    config = uvicorn.Config(
        create_app(engine),
        host="127.0.0.1",
        port=port,
        log_level="debug" if verbose else "warning",
        access_log=verbose,
        lifespan="off",
        ws="none",  # no websockets here: their import is 50 ms of every start
    )
    try:
        uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
    finally:
        engine.stop()
