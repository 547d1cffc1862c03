"""/api/rerank: documents scored against a query by a reranker, in Jina's and Cohere's shape.

The request is ``model``, ``query``, ``documents`` (strings, or ``{"text": ...}`` objects as
Cohere and Jina accept), ``top_n`` and ``return_documents``; the answer is llama-server's
``/v1/rerank`` body (clients written for it work unchanged): ``model``, ``object``,
``usage`` and ``results``, each ``{"index", "relevance_score"}`` plus ``document`` when
asked for, best first. Every pair is scored in one runner call, batched as embeddings are.
``/v1/rerank`` (``api/openai/rerank.py``) is the same call with OpenAI-shaped errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ConfigDict

from pollama.api.ollama.generate import keep_alive_of, parse_body
from pollama.api.state import ServerState
from pollama.api.wiremodel import WireModel
from pollama.errors import BadRequest
from pollama.options.parameters import validate_options

router = APIRouter()


class RerankRequest(WireModel):
    """Unknown fields are ignored; ``query`` and ``documents`` are checked by hand, for
    messages that say what is wrong."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    query: Any = None
    documents: Any = None
    top_n: int | None = None
    return_documents: bool = False
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class RerankDocument(WireModel):
    text: str


class RerankResult(WireModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(WireModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(WireModel):
    model: str
    object: str = "list"
    usage: RerankUsage
    results: list[RerankResult]


def document_texts(documents: Any) -> list[str]:
    """The documents as strings: each a string or an object with a ``text`` string."""
    if not isinstance(documents, list) or not documents:
        raise BadRequest("documents must be a non-empty list of strings")
    texts = []
    for index, document in enumerate(documents):
        if isinstance(document, dict):
            document = document.get("text")
        if not isinstance(document, str):
            raise BadRequest(f"documents[{index}] must be a string or an object with a text string")
        texts.append(document)
    return texts


def check_request(body: RerankRequest) -> tuple[str, list[str]]:
    """The query and documents of a valid request (BadRequest, a 400, otherwise)."""
    if body.query is None:
        raise BadRequest("query is required")
    if not isinstance(body.query, str) or not body.query:
        raise BadRequest("query must be a non-empty string")
    texts = document_texts(body.documents)
    if body.top_n is not None and body.top_n < 1:
        raise BadRequest(f"top_n must be at least 1, not {body.top_n}")
    return body.query, texts


def ranked(
    scores: list[float], texts: list[str], top_n: int | None, with_documents: bool
) -> list[RerankResult]:
    """Results best first (ties keep the input order), cut to ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or len(scores)]
    return [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=RerankDocument(text=texts[i]) if with_documents else None,
        )
        for i in order
    ]


async def rerank_documents(state: ServerState, body: RerankRequest) -> RerankResponse:
    """Validate, score every document in one runner call, rank."""
    query, texts = check_request(body)
    keep_alive = keep_alive_of(body.keep_alive)
    spec, _ = await state.model(body.model)
    if not spec.model.is_reranker:
        raise BadRequest(f'"{spec.name}" does not support reranking')
    checked = validate_options(dict(body.options or {}))
    async with await state.scheduler.acquire(spec, checked, keep_alive) as lease:
        result = await lease.server.rerank(query, texts)
    if len(result.scores) != len(texts):
        raise RuntimeError(f"runner scored {len(result.scores)} of {len(texts)} documents")
    state.metrics.embedded(spec.name, result.prompt_eval_count)
    tokens = result.prompt_eval_count
    return RerankResponse(
        model=body.model,
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
        results=ranked(list(result.scores), texts, body.top_n, body.return_documents),
    )


def encoded(response: RerankResponse) -> dict[str, Any]:
    """The JSON body: ``document`` only where it was asked for."""
    return response.model_dump(mode="json", exclude_none=True)


@router.post("/api/rerank")
async def rerank(request: Request) -> dict[str, Any]:
    body = await parse_body(request, RerankRequest)
    return encoded(await rerank_documents(request.app.state.pollama, body))
