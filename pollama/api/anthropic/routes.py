"""The route of Anthropic's Messages API, ``POST /v1/messages``.

Its wire types and translation (``messages``) are imported by the first request that
uses them: most servers never see one, and the server's start does not wait for them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    from pollama.api.anthropic.messages import answer  # at first use: see above

    return await answer(request)
