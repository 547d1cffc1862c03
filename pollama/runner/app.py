"""The runner's HTTP face: the protocol endpoints over the engine, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

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


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_status_routes(app, engine)
    _add_model_routes(app, engine)
    _add_completion_route(app, engine)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Errors as ``{"error": …}`` with their status, as the server's client expects."""

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_: Request, exc: ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)


def _add_status_routes(app: FastAPI, engine: Engine) -> None:
    """What the server polls: health, stats, measured memory, and the devices seen."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return engine.health().to_json()

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return engine.stats().to_json()

    @app.get("/memory")
    async def memory() -> JSONResponse:
        """The loaded model's measured memory: what the server reports in /api/ps."""
        measured = engine.memory()
        if measured is None:
            return JSONResponse({"error": "no model loaded"}, status_code=404)
        return JSONResponse(memory_to_json(measured))

    @app.get("/info")
    async def info() -> dict[str, Any]:
        gpus = devices.nvidia_gpus() + devices.amd_gpus()
        return {
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


def _add_model_routes(app: FastAPI, engine: Engine) -> None:
    """Loading, tokens, embeddings and rerank scores: each one call on the engine thread."""

    @app.post("/load")
    async def load(request: Request) -> dict[str, Any]:
        body = LoadRequest.from_json(await _json(request))
        response = await asyncio.wrap_future(engine.call(lambda: engine.load(body)))
        return response.to_json()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await _json(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise ProtocolError("content must be a string")
        add_special = bool(body.get("add_special", True))
        tokens = await asyncio.wrap_future(
            engine.call(lambda: engine.tokenize(content, add_special))
        )
        return {"tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await _json(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ProtocolError("tokens must be a list of integers")
        content = await asyncio.wrap_future(engine.call(lambda: engine.detokenize(tokens)))
        return {"content": content}

    @app.post("/embedding")
    async def embedding(request: Request) -> dict[str, Any]:
        body = EmbeddingRequest.from_json(await _json(request))
        texts = list(body.content)
        result = await asyncio.wrap_future(engine.call(lambda: engine.embed(texts, body.truncate)))
        return result.to_json()

    @app.post("/rerank")
    async def rerank(request: Request) -> dict[str, Any]:
        body = RerankRequest.from_json(await _json(request))
        documents = list(body.documents)
        scores = await asyncio.wrap_future(
            engine.call(lambda: engine.rerank(body.query, documents))
        )
        return scores.to_json()


def _add_completion_route(app: FastAPI, engine: Engine) -> None:
    outboxes: list[Outbox[Item]] = []

    @app.post("/completion")
    async def completion(request: Request) -> Response:
        if not outboxes:  # the first request runs on the loop that serves them all
            outboxes.append(Outbox(asyncio.get_running_loop()))
            engine.set_step_hooks(StepHooks(outboxes[0].hold, outboxes[0].flush))
        return await _complete(engine, outboxes[0], request)


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
    )
    try:
        uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
    finally:
        engine.stop()
