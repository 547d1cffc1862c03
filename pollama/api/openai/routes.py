"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models and /v1/responses, over the request path the native routes use.

Each request becomes a ``ChatCall``/``GenerateCall`` (``requests``) or an
``embed_inputs`` call; the run's events become OpenAI's responses (``replies``), or,
streaming, one server-sent event per chunk as its event arrives, and ``data: [DONE]``
ends the stream. Everything refusable is refused before the first
byte, so it answers with a status and OpenAI's error shape (the app's exception
handler picks that shape by the ``/v1/`` path).

The Responses API (``responses``, with its own wire types) is imported by its first
request: the server's start does not wait for it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from pollama.api.completion import (
    start_chat,
    start_generate,
)
from pollama.api.errors import CLIENT_CLOSED_REQUEST, error_record, openai_body
from pollama.api.ollama.embed import embed_inputs, fit_dimensions
from pollama.api.ollama.generate import keep_alive_of, parse_body
from pollama.api.openai.replies import (
    chat_chunks,
    chat_completion,
    completion,
    completion_chunks,
    encoded,
    response_ids,
)
from pollama.api.openai.requests import chat_call, generate_call, include_usage, input_texts
from pollama.api.openai.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingData,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelCard,
    ModelList,
)
from pollama.api.state import ServerState
from pollama.api.streaming import first_and_rest, sse, unless_client_leaves
from pollama.errors import InvalidModelName, ModelNotFound
from pollama.store.names import ModelName

router = APIRouter()
SSE = "text/event-stream"
_error = functools.partial(error_record, shape=openai_body)


# -- routes --------------------------------------------------------------------------------


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    run = await start_chat(_state(request), chat_call(body))
    reply = response_ids("chatcmpl", body.model)
    if body.stream:
        return await _stream(chat_chunks(run, reply, include_usage(body)))
    return _json_unless_gone(await unless_client_leaves(request, chat_completion(run, reply)))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    run = await start_generate(_state(request), generate_call(body))
    reply = response_ids("cmpl", body.model)
    if body.stream:
        return await _stream(completion_chunks(run, reply, include_usage(body)))
    return _json_unless_gone(await unless_client_leaves(request, completion(run, reply)))


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    done = await embed_inputs(
        _state(request),
        body.model,
        input_texts(body.input),
        options=body.options,
        keep_alive=keep_alive_of(body.keep_alive),
        truncate=body.truncate,
    )
    data = [
        EmbeddingData(
            index=i, embedding=encoded(fit_dimensions(v, body.dimensions), body.encoding_format)
        )
        for i, v in enumerate(done.vectors)
    ]
    usage = EmbeddingUsage(
        prompt_tokens=done.prompt_eval_count, total_tokens=done.prompt_eval_count
    )
    return _json(EmbeddingList(data=data, model=body.model, usage=usage))


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    from pollama.api.openai.responses import answer  # at first use: see the docstring

    return await answer(request)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    entries = await asyncio.to_thread(_state(request).store.list_models)
    return _json(ModelList(data=[_card(e.name, e.modified_at) for e in entries]))


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response:
    try:
        _, resolved = await _state(request).model(model)  # imports the demo model when named
    except InvalidModelName:
        raise ModelNotFound(model) from None
    return _json(_card(resolved.name, resolved.modified_at))


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.pollama
    return state


def _json_unless_gone(record: BaseModel | None) -> Response:
    """The whole reply, or 499 for a client that left before it was whole."""
    return Response(status_code=CLIENT_CLOSED_REQUEST) if record is None else _json(record)


def _json(record: BaseModel) -> JSONResponse:
    return JSONResponse(record.model_dump(mode="json", exclude_none=True))


async def _stream(records: AsyncIterator[BaseModel]) -> StreamingResponse:
    """Server-sent events; an error before the first record is still a status."""
    first, rest = await first_and_rest(records)
    return StreamingResponse(
        sse(first, rest, error=_error), media_type=SSE, headers={"Cache-Control": "no-cache"}
    )


def _card(name: ModelName, modified_at: datetime) -> ModelCard:
    return ModelCard(id=name.display, created=int(modified_at.timestamp()), owned_by=name.namespace)
