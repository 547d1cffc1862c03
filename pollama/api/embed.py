"""/api/embed (normalized, batched) and the legacy /api/embeddings (raw vector)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from fastapi import APIRouter, Request

from pollama.api.generate import keep_alive_of, load_or_unload, parse_body
from pollama.api.state import ServerState
from pollama.api.types import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
)
from pollama.errors import BadRequest
from pollama.server.parameters import validate_options

router = APIRouter()


def normalize(vector: Sequence[float]) -> list[float]:
    """The vector scaled to unit L2 length; a zero vector stays zero."""
    norm = math.hypot(*vector)  # scaled internally: tiny components do not underflow
    if norm == 0.0:
        return [0.0 for _ in vector]
    return [x / norm for x in vector]


def shape(vector: Sequence[float], dimensions: int | None) -> list[float]:
    """What /api/embed returns: optionally the first ``dimensions`` components, normalized.

    Slicing before normalizing keeps Matryoshka-style truncation a unit vector.
    """
    if dimensions is not None:
        if dimensions > len(vector):
            raise BadRequest(
                f"dimensions ({dimensions}) exceeds the model's embedding length ({len(vector)})"
            )
        vector = vector[:dimensions]
    return normalize(vector)


@router.post("/api/embed")
async def embed(request: Request) -> EmbedResponse:
    body = await parse_body(request, EmbedRequest)
    state: ServerState = request.app.state.pollama
    spec, _ = await state.model(body.model)
    keep_alive = keep_alive_of(body.keep_alive)
    options = validate_options(body.options or {})
    started = time.perf_counter_ns()
    inputs = [] if body.input == "" else body.inputs
    if any(not text for text in inputs):
        raise BadRequest("input must not contain empty strings")
    if not inputs:
        await load_or_unload(state, spec, options, keep_alive)
        return EmbedResponse(model=body.model, embeddings=[])
    async with await state.scheduler.acquire(spec, options, keep_alive) as lease:
        result = await lease.server.embedding(inputs, truncate=body.truncate)
        load_duration = lease.load_duration
    return EmbedResponse(
        model=body.model,
        embeddings=[shape(v, body.dimensions) for v in result.embeddings],
        total_duration=time.perf_counter_ns() - started,
        load_duration=load_duration,
        prompt_eval_count=result.prompt_eval_count,
    )


@router.post("/api/embeddings")
async def embeddings(request: Request) -> EmbeddingsResponse:
    body = await parse_body(request, EmbeddingsRequest)
    state: ServerState = request.app.state.pollama
    spec, _ = await state.model(body.model)
    keep_alive = keep_alive_of(body.keep_alive)
    options = validate_options(body.options or {})
    if not body.prompt:
        await load_or_unload(state, spec, options, keep_alive)
        return EmbeddingsResponse(embedding=[])
    async with await state.scheduler.acquire(spec, options, keep_alive) as lease:
        result = await lease.server.embedding([body.prompt], truncate=True)
    return EmbeddingsResponse(embedding=list(result.embeddings[0]))
