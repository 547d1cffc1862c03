"""/api/embed (normalized, batched) and the legacy /api/embeddings (raw vector)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from pollama.api.completion import load_or_unload
from pollama.api.ollama.generate import keep_alive_of, parse_body
from pollama.api.ollama.types import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
)
from pollama.api.state import ServerState
from pollama.errors import BadRequest
from pollama.options.parameters import validate_options

router = APIRouter()


def normalize(vector: Sequence[float]) -> list[float]:
    """The vector scaled to unit L2 length; a zero vector stays zero."""
    norm = math.hypot(*vector)  # scaled internally: tiny components do not underflow
    if norm == 0.0:
        return [0.0 for _ in vector]
    return [x / norm for x in vector]


def fit_dimensions(vector: Sequence[float], dimensions: int | None) -> list[float]:
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


@dataclass(frozen=True)
class Embedded:
    """Raw (unnormalized) vectors, one per input, and what computing them cost."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_eval_count: int
    load_duration: int
    total_duration: int


async def embed_inputs(
    state: ServerState,
    model: str,
    inputs: Sequence[str],
    *,
    options: Mapping[str, Any] | None = None,
    keep_alive: float | None = None,
    truncate: bool = True,
) -> Embedded:
    """Embed every input in one runner call (one batch, not one request each).

    No inputs loads the model (or, with keep_alive 0, unloads it) and embeds nothing.
    """
    if any(not text for text in inputs):
        raise BadRequest("input must not contain empty strings")
    started = time.perf_counter_ns()
    if not inputs:
        await load_or_unload(state, model, options or {}, keep_alive)
        return Embedded((), 0, 0, time.perf_counter_ns() - started)
    spec, _ = await state.model(model)
    if spec.model.is_reranker:
        raise BadRequest(f'"{spec.name}" does not support embeddings (it is a reranker)')
    checked = validate_options(dict(options or {}))
    async with await state.scheduler.acquire(spec, checked, keep_alive) as lease:
        result = await lease.server.embedding(list(inputs), truncate=truncate)
        load_duration = lease.load_duration
    state.metrics.embedded(spec.name, result.prompt_eval_count)
    return Embedded(
        vectors=tuple(tuple(v) for v in result.embeddings),
        prompt_eval_count=result.prompt_eval_count,
        load_duration=load_duration,
        total_duration=time.perf_counter_ns() - started,
    )


@router.post("/api/embed")
async def embed(request: Request) -> EmbedResponse:
    body = await parse_body(request, EmbedRequest)
    state: ServerState = request.app.state.pollama
    inputs = [] if body.input == "" else body.inputs
    done = await embed_inputs(
        state,
        body.model,
        inputs,
        options=body.options,
        keep_alive=keep_alive_of(body.keep_alive),
        truncate=body.truncate,
    )
    if not inputs:
        return EmbedResponse(model=body.model, embeddings=[])
    return EmbedResponse(
        model=body.model,
        embeddings=[fit_dimensions(v, body.dimensions) for v in done.vectors],
        total_duration=done.total_duration,
        load_duration=done.load_duration,
        prompt_eval_count=done.prompt_eval_count,
    )


@router.post("/api/embeddings")
async def embeddings(request: Request) -> EmbeddingsResponse:
    body = await parse_body(request, EmbeddingsRequest)
    state: ServerState = request.app.state.pollama
    inputs = [body.prompt] if body.prompt else []
    done = await embed_inputs(
        state, body.model, inputs, options=body.options, keep_alive=keep_alive_of(body.keep_alive)
    )
    return EmbeddingsResponse(embedding=list(done.vectors[0]) if done.vectors else [])
