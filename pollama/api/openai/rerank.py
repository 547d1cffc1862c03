"""/v1/rerank: the rerank call llama-server and Jina/Cohere clients use, with OpenAI-shaped
errors (every ``/v1/`` path gets them). The call itself is ``api/ollama/rerank.py``'s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pollama.api.ollama.generate import parse_body
from pollama.api.ollama.rerank import RerankRequest, encoded, rerank_documents

router = APIRouter()


@router.post("/v1/rerank")
async def rerank(request: Request) -> dict[str, Any]:
    body = await parse_body(request, RerankRequest)
    return encoded(await rerank_documents(request.app.state.pollama, body))
