"""/api/generate and /api/chat: prompt → runner → NDJSON (or one JSON object)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pollama.api.state import ServerState
from pollama.api.streaming import first_and_rest, ndjson
from pollama.api.types import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    Message,
)
from pollama.errors import BadRequest
from pollama.ggufmeta import GGUFModel
from pollama.llm.grammar import grammar_from_format
from pollama.runner.protocol import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    SamplingOptions,
)
from pollama.server.keepalive import parse_keep_alive
from pollama.server.parameters import validate_options
from pollama.server.prompt import (
    Prompt,
    assemble_chat,
    generate_prompt,
    render_chat,
    truncate_chat,
)
from pollama.server.runners import Lease, ModelSpec
from pollama.server.template import special_tokens, template_for

router = APIRouter()
NDJSON = "application/x-ndjson"
B = TypeVar("B", bound=BaseModel)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateRequest)
    check_format(body.format)
    if body.raw and (body.template or body.system or body.context):
        raise BadRequest("raw mode does not support template, system, or context")
    state: ServerState = request.app.state.pollama
    spec, resolved = await state.model(body.model)
    keep_alive = keep_alive_of(body.keep_alive)
    options = validate_options(body.options or {})
    started = time.perf_counter_ns()
    if not body.prompt and not body.suffix and not body.images:
        reason = await load_or_unload(state, spec, options, keep_alive)
        return JSONResponse(
            _json(GenerateResponse(model=body.model, done=True, done_reason=reason))
        )

    lease = await state.scheduler.acquire(spec, options, keep_alive)
    try:
        server = lease.server
        template = template_for(spec.model, body.template or resolved.template)
        bos, eos = _special(spec.model)
        context = await server.detokenize(body.context) if body.context else ""
        prompt = generate_prompt(
            template,
            prompt=body.prompt,
            system=body.system,
            suffix=body.suffix,
            raw=body.raw,
            images=body.images or (),
            modelfile_system=resolved.system,
            modelfile_messages=list(resolved.messages),
            context=context,
            bos=bos,
            eos=eos,
            model=spec.name,
        )
        stream = server.completion(_completion(body, prompt, lease), format=body.format)
    except BaseException:
        await lease.release()
        raise

    async def records() -> AsyncIterator[GenerateResponse]:
        text: list[str] = []
        try:
            async for item in stream:
                if isinstance(item, CompletionChunk):
                    text.append(item.content)
                    yield GenerateResponse(model=body.model, response=item.content)
                    continue
                tokens = None if body.raw else await server.tokenize(prompt.text + "".join(text))
                yield GenerateResponse(
                    model=body.model,
                    done=True,
                    done_reason=item.done_reason,
                    context=tokens,
                    **_metrics(item, lease, started),
                )
        finally:
            await lease.release()

    return await _respond(records(), body.stream, _merge_generate)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await parse_body(request, ChatRequest)
    check_format(body.format)
    state: ServerState = request.app.state.pollama
    spec, resolved = await state.model(body.model)
    keep_alive = keep_alive_of(body.keep_alive)
    options = validate_options(body.options or {})
    started = time.perf_counter_ns()
    if not body.messages:
        reason = await load_or_unload(state, spec, options, keep_alive)
        done = ChatResponse(model=body.model, done=True, done_reason=reason)
        return JSONResponse(_json(done))

    lease = await state.scheduler.acquire(spec, options, keep_alive)
    try:
        server = lease.server
        template = template_for(spec.model, resolved.template)
        bos, eos = _special(spec.model)
        messages = assemble_chat(
            [m.model_dump(exclude_none=True) for m in body.messages],
            system_default=resolved.system,
            modelfile_messages=list(resolved.messages),
        )

        def render(kept: list[Any]) -> Prompt:
            return render_chat(template, kept, tools=body.tools, bos=bos, eos=eos)

        if body.truncate:

            async def count(kept: list[Any]) -> int:
                return len(await server.tokenize(render(kept).text))

            messages = await truncate_chat(messages, count, server.context_length)
        prompt = render(messages)
        stream = server.completion(_completion(body, prompt, lease), format=body.format)
    except BaseException:
        await lease.release()
        raise

    async def records() -> AsyncIterator[ChatResponse]:
        try:
            async for item in stream:
                if isinstance(item, CompletionChunk):
                    message = Message(role="assistant", content=item.content)
                    yield ChatResponse(model=body.model, message=message)
                    continue
                yield ChatResponse(
                    model=body.model,
                    message=Message(role="assistant", content=""),
                    done=True,
                    done_reason=item.done_reason,
                    **_metrics(item, lease, started),
                )
        finally:
            await lease.release()

    return await _respond(records(), body.stream, _merge_chat)


async def parse_body(request: Request, kind: type[B]) -> B:
    """The request body as ``kind``: 400 with Ollama's messages when it is not."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadRequest(f"{where}: {first['msg']}" if where else first["msg"]) from None


def check_format(fmt: object) -> None:
    """Reject a bad ``format`` before anything loads (InvalidFormat/UnsupportedSchema → 400)."""
    if fmt is not None and fmt != "":
        grammar_from_format(fmt)


def keep_alive_of(value: object) -> float | None:
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def load_or_unload(
    state: ServerState, spec: ModelSpec, options: dict[str, Any], keep_alive: float | None
) -> str:
    """An empty prompt loads the model; with keep_alive 0 it unloads it instead."""
    if keep_alive == 0:
        await state.scheduler.unload(spec.name)
        return "unload"
    lease = await state.scheduler.acquire(spec, options, keep_alive)
    await lease.release()
    return "load"


def _completion(
    body: GenerateRequest | ChatRequest, prompt: Prompt, lease: Lease
) -> CompletionRequest:
    return CompletionRequest(
        prompt=prompt.text,
        images=prompt.images,
        options=SamplingOptions.from_json(lease.options),
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        shift=body.shift,
        truncate=body.truncate,
    )


def _special(model: GGUFModel) -> tuple[str, str]:
    """BOS/EOS strings for templates; no BOS when the tokenizer adds its own (no doubles)."""
    bos, eos = special_tokens(model.path)
    adds_bos = model.get("tokenizer.ggml.add_bos_token")
    if adds_bos is None:
        adds_bos = model.get("tokenizer.ggml.model") == "llama"  # SentencePiece adds BOS
    return ("" if adds_bos else bos), eos


def _metrics(done: CompletionDone, lease: Lease, started: int) -> dict[str, Any]:
    return {
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": lease.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }


async def _respond(
    records: AsyncIterator[Any], stream: bool, merge: Callable[[list[Any]], Any]
) -> Response:
    """NDJSON when streaming; otherwise one object with the pieces concatenated."""
    if not stream:
        return JSONResponse(_json(merge([r async for r in records])))
    first, rest = await first_and_rest(records)
    return StreamingResponse(ndjson(first, rest), media_type=NDJSON)


def _merge_generate(records: list[GenerateResponse]) -> GenerateResponse:
    final = records[-1]
    return final.model_copy(update={"response": "".join(r.response for r in records)})


def _merge_chat(records: list[ChatResponse]) -> ChatResponse:
    final = records[-1]
    content = "".join(r.message.content for r in records)
    return final.model_copy(update={"message": Message(role="assistant", content=content)})


def _json(model: BaseModel) -> Any:
    return json.loads(model.model_dump_json(exclude_none=True))
