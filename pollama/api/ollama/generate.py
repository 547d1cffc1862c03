"""/api/generate and /api/chat: Ollama's wire shapes over ``pollama.api.completion``."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pollama.api.completion import (
    ChatCall,
    Delta,
    Finish,
    GenerateCall,
    check_format,
    load_or_unload,
    start_chat,
    start_generate,
)
from pollama.api.errors import CLIENT_CLOSED_REQUEST
from pollama.api.lora import lora_scales
from pollama.api.ollama.types import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    Logprob,
    Message,
    ToolCall,
    ToolCallFunction,
)
from pollama.api.state import ServerState
from pollama.api.streaming import first_and_rest, ndjson, unless_client_leaves
from pollama.errors import BadRequest
from pollama.scheduler.keepalive import parse_keep_alive

router = APIRouter()
NDJSON = "application/x-ndjson"
_SURROGATE = re.compile("[\ud800-\udfff]")
B = TypeVar("B", bound=BaseModel)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateRequest)
    state: ServerState = request.app.state.pollama
    keep_alive = keep_alive_of(body.keep_alive)
    if not body.prompt and not body.suffix and not body.images:
        check_format(body.format)
        reason = await load_or_unload(state, body.model, body.options or {}, keep_alive)
        done = GenerateResponse(model=body.model, done=True, done_reason=reason)
        return JSONResponse(_json(done))
    run = await start_generate(
        state,
        GenerateCall(
            model=body.model,
            prompt=body.prompt,
            suffix=body.suffix,
            system=body.system,
            template=body.template,
            context=body.context,
            raw=body.raw,
            images=tuple(body.images or ()),
            **_common(body, keep_alive),
        ),
    )

    async def records() -> AsyncIterator[GenerateResponse]:
        async for event in run.events:
            if isinstance(event, Delta):
                yield GenerateResponse(
                    model=body.model,
                    response=event.content,
                    thinking=event.thinking or None,
                    tool_calls=_tool_calls(event) or None,
                    logprobs=_logprobs(event),
                )
                continue
            yield GenerateResponse(
                model=body.model,
                done=True,
                done_reason=event.done_reason,
                context=list(event.context) if event.context is not None else None,
                **_metrics(event),
            )

    return await _respond(request, records(), body.stream, _merge_generate)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await parse_body(request, ChatRequest)
    state: ServerState = request.app.state.pollama
    keep_alive = keep_alive_of(body.keep_alive)
    if not body.messages:
        check_format(body.format)
        reason = await load_or_unload(state, body.model, body.options or {}, keep_alive)
        done = ChatResponse(model=body.model, done=True, done_reason=reason)
        return JSONResponse(_json(done))
    run = await start_chat(
        state,
        ChatCall(
            model=body.model,
            messages=[m.model_dump(exclude_none=True) for m in body.messages],
            tools=body.tools,
            **_common(body, keep_alive),
        ),
    )

    async def records() -> AsyncIterator[ChatResponse]:
        async for event in run.events:
            if isinstance(event, Delta):
                message = Message(
                    role="assistant",
                    content=event.content,
                    thinking=event.thinking or None,
                    tool_calls=_tool_calls(event) or None,
                )
                yield ChatResponse(model=body.model, message=message, logprobs=_logprobs(event))
                continue
            yield ChatResponse(
                model=body.model,
                message=Message(role="assistant", content=""),
                done=True,
                done_reason=event.done_reason,
                **_metrics(event),
            )

    return await _respond(request, records(), body.stream, _merge_chat)


async def parse_body(request: Request, kind: type[B]) -> B:
    """The request body as ``kind``: 400 with Ollama's messages when it is not."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    _check_strings(data)
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadRequest(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _check_strings(data: object) -> None:
    """Refuse a lone surrogate (``"\\ud800"``): JSON can escape one, but it is not text,
    and nothing downstream (the runner's wire, a UTF-8 file in the store) can encode it."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise BadRequest("invalid JSON: a string holds an unpaired UTF-16 surrogate")
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item


def keep_alive_of(value: object) -> float | None:
    """The request's ``keep_alive`` (InvalidKeepAlive, a 400, when it is neither)."""
    return parse_keep_alive(value)


def _common(body: GenerateRequest | ChatRequest, keep_alive: float | None) -> dict[str, Any]:
    """The fields generate and chat share, as a ChatCall/GenerateCall takes them."""
    return {
        "format": body.format,
        "think": body.think,
        "options": body.options or {},
        "keep_alive": keep_alive,
        "truncate": body.truncate,
        "shift": body.shift,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs,
        "lora": lora_scales(body.lora),
    }


def _tool_calls(delta: Delta) -> list[ToolCall]:
    return [
        ToolCall(
            id=call.id,
            function=ToolCallFunction(
                index=call.index, name=call.name, arguments=dict(call.arguments)
            ),
        )
        for call in delta.tool_calls
    ]


def _logprobs(delta: Delta) -> list[Logprob] | None:
    if not delta.logprobs:
        return None
    return [Logprob.model_validate(lp.to_json()) for lp in delta.logprobs]


def _metrics(done: Finish) -> dict[str, Any]:
    metrics = {
        "total_duration": done.total_duration,
        "load_duration": done.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }
    if done.draft_count:
        # Ours, not Ollama's (llama-server's timings have draft_n, draft_n_accepted):
        # only when something was drafted, so other replies keep Ollama's fields.
        metrics["draft_count"] = done.draft_count
        metrics["draft_accepted_count"] = done.draft_accepted
    return metrics


async def _respond(
    request: Request, records: AsyncIterator[Any], stream: bool, merge: Callable[[list[Any]], Any]
) -> Response:
    """NDJSON when streaming; otherwise one object with the pieces concatenated (and the
    generation cancelled if the client leaves before it is whole)."""
    if not stream:
        whole = await unless_client_leaves(request, _collect(records))
        if whole is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(_json(merge(whole)))
    first, rest = await first_and_rest(records)
    return StreamingResponse(ndjson(first, rest), media_type=NDJSON)


async def _collect(records: AsyncIterator[Any]) -> list[Any]:
    return [record async for record in records]


def _merge_generate(records: list[GenerateResponse]) -> GenerateResponse:
    final = records[-1]
    thinking = "".join(r.thinking or "" for r in records)
    calls = [c for r in records for c in r.tool_calls or ()]
    logprobs = [lp for r in records for lp in r.logprobs or ()]
    return final.model_copy(
        update={
            "response": "".join(r.response for r in records),
            "thinking": thinking or None,
            "tool_calls": calls or None,
            "logprobs": logprobs or None,
        }
    )


def _merge_chat(records: list[ChatResponse]) -> ChatResponse:
    final = records[-1]
    thinking = "".join(r.message.thinking or "" for r in records)
    calls = [c for r in records for c in r.message.tool_calls or ()]
    logprobs = [lp for r in records for lp in r.logprobs or ()]
    message = Message(
        role="assistant",
        content="".join(r.message.content for r in records),
        thinking=thinking or None,
        tool_calls=calls or None,
    )
    return final.model_copy(update={"message": message, "logprobs": logprobs or None})


def _json(model: BaseModel) -> Any:
    return json.loads(model.model_dump_json(exclude_none=True))
