"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings and
/v1/models, translated to and from the engine the native routes use.

Each request becomes a ``ChatCall``/``GenerateCall`` (or an ``embed_inputs`` call); the
run's events become OpenAI's responses, or, streaming, one server-sent event per
chunk as its event arrives: the first carries ``delta.role``, a last one with an empty
delta carries ``finish_reason``, an optional usage chunk with no choices follows, and
``data: [DONE]`` ends the stream. Everything refusable is refused before the first
byte, so it answers with a status and OpenAI's error shape (the app's exception
handler picks that shape by the ``/v1/`` path).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from pollama.api.completion import (
    THINK_LEVELS,
    CallOut,
    ChatCall,
    Delta,
    Finish,
    GenerateCall,
    Run,
    start_chat,
    start_generate,
)
from pollama.api.embed import embed_inputs, shape
from pollama.api.errors import error_record, openai_body
from pollama.api.generate import keep_alive_of, parse_body
from pollama.api.openai_types import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageIn,
    ChatMessageOut,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    ContentPart,
    EmbeddingData,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FunctionCallOut,
    ModelCard,
    ModelList,
    NamedToolChoice,
    PromptTokensDetails,
    ResponseFormat,
    SamplingRequest,
    TokenLogprob,
    ToolCallIn,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from pollama.api.state import ServerState
from pollama.api.streaming import first_and_rest, sse
from pollama.errors import BadRequest, InvalidModelName, ModelNotFound
from pollama.protocol.wire import Logprob
from pollama.store.names import ModelName

router = APIRouter()
SSE = "text/event-stream"
FINGERPRINT = "fp_ollama"
FinishReason = Literal["stop", "length", "tool_calls"]
_error = functools.partial(error_record, shape=openai_body)


@dataclass(frozen=True)
class _Reply:
    """What every record of one response repeats."""

    id: str
    created: int
    model: str


def _reply(prefix: str, model: str) -> _Reply:
    return _Reply(id=f"{prefix}-{secrets.token_hex(12)}", created=int(time.time()), model=model)


# -- routes --------------------------------------------------------------------------------


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    run = await start_chat(_state(request), chat_call(body))
    reply = _reply("chatcmpl", body.model)
    if body.stream:
        return await _stream(_chat_chunks(run, reply, _include_usage(body)))
    return _json(await _chat_completion(run, reply))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    run = await start_generate(_state(request), generate_call(body))
    reply = _reply("cmpl", body.model)
    if body.stream:
        return await _stream(_completion_chunks(run, reply, _include_usage(body)))
    return _json(await _completion(run, reply))


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    done = await embed_inputs(
        _state(request),
        body.model,
        _texts(body.input),
        options=body.options,
        keep_alive=keep_alive_of(body.keep_alive),
        truncate=body.truncate,
    )
    data = [
        EmbeddingData(index=i, embedding=_encoded(shape(v, body.dimensions), body.encoding_format))
        for i, v in enumerate(done.vectors)
    ]
    usage = EmbeddingUsage(
        prompt_tokens=done.prompt_eval_count, total_tokens=done.prompt_eval_count
    )
    return _json(EmbeddingList(data=data, model=body.model, usage=usage))


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


# -- requests → calls ----------------------------------------------------------------------


def chat_call(body: ChatCompletionRequest) -> ChatCall:
    """The engine's call for an OpenAI chat request; BadRequest for what we cannot honour."""
    _check_n(body.n)
    max_tokens = body.max_completion_tokens
    return ChatCall(
        model=body.model,
        messages=messages_of(body.messages),
        tools=body.tools or None,
        tool_choice=_tool_choice(body.tool_choice, body.tools),
        format=_format_of(body.response_format),
        think=_think(body.reasoning_effort, body.think),
        options=_options(body, body.max_tokens if max_tokens is None else max_tokens),
        keep_alive=keep_alive_of(body.keep_alive),
        logprobs=bool(body.logprobs),
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
    )


def generate_call(body: CompletionRequest) -> GenerateCall:
    """The engine's call for a (legacy) text completion request."""
    _check_n(body.n)
    if body.echo:
        raise BadRequest("echo is not supported")
    return GenerateCall(
        model=body.model,
        prompt=_prompt_of(body.prompt),
        suffix=body.suffix or "",
        think=body.think,
        options=_options(body, body.max_tokens),
        keep_alive=keep_alive_of(body.keep_alive),
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )


def _check_n(n: int | None) -> None:
    if n is not None and n != 1:
        raise BadRequest(f"n must be 1 (got {n}): one choice per request is supported")


def _include_usage(body: SamplingRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _options(body: SamplingRequest, max_tokens: int | None) -> dict[str, Any]:
    """Ollama options: the request's ``options`` overlaid with the OpenAI fields it set."""
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    explicit = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "num_predict": max_tokens,
        "seed": body.seed,
        "stop": stop,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
    }
    return {**(body.options or {}), **{k: v for k, v in explicit.items() if v is not None}}


def _think(effort: str | None, think: bool | str | None) -> bool | str | None:
    """``reasoning_effort`` as Ollama's ``think``: a level, or False for ``none``."""
    if effort is None:
        return think
    if effort == "none":
        return False
    if effort in THINK_LEVELS:
        return effort
    raise BadRequest(
        f"invalid reasoning_effort {effort!r} (expected one of none, low, medium, high)"
    )


def _format_of(response_format: ResponseFormat | None) -> Any:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json"
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise BadRequest("response_format json_schema needs json_schema.schema")
    return spec.schema_


def _tool_choice(choice: str | NamedToolChoice | None, tools: list[Any] | None) -> str:
    """``auto``, ``none``, ``required`` or the name of the tool that must be called."""
    if choice is None:
        return "auto"
    name = choice if isinstance(choice, str) else choice.function.name
    if name not in ("auto", "none") and not tools:
        raise BadRequest(f"tool_choice {name!r} needs tools")
    return name


def _prompt_of(prompt: str | list[str] | list[int] | list[list[int]]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if prompt and all(isinstance(p, str) for p in prompt):
        raise BadRequest("prompt must be one string (a list of several is not supported)")
    raise BadRequest("prompt must be a string; token arrays are not supported")


def _texts(given: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(given, str):
        return [given]
    if not given:
        raise BadRequest("input must not be empty")
    texts = [text for text in given if isinstance(text, str)]
    if len(texts) != len(given):
        raise BadRequest(
            "input must be a string or a list of strings; token arrays are not supported"
        )
    return texts


def messages_of(messages: Sequence[ChatMessageIn]) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama's: parts flattened into content and images, tool-call
    arguments decoded, and each tool result named after the call it answers."""
    names: dict[str, str] = {}  # tool call id → function name
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        content, images = _content(message.content, f"messages[{i}]")
        role = "system" if message.role == "developer" else message.role
        converted: dict[str, Any] = {"role": role, "content": content}
        if images:
            converted["images"] = images
        thinking = message.reasoning or message.reasoning_content
        if thinking and role == "assistant":
            converted["thinking"] = thinking
        if message.tool_calls and role == "assistant":
            calls = [
                _call_in(c, f"messages[{i}].tool_calls[{j}]")
                for j, c in enumerate(message.tool_calls)
            ]
            names.update((c["id"], c["function"]["name"]) for c in calls if "id" in c)
            converted["tool_calls"] = calls
        if role == "tool":
            if message.tool_call_id:
                converted["tool_call_id"] = message.tool_call_id
            tool_name = names.get(message.tool_call_id or "") or message.name
            if tool_name:
                converted["tool_name"] = tool_name
        out.append(converted)
    return out


def _content(content: str | list[ContentPart] | None, where: str) -> tuple[str, list[str]]:
    """A message's text (its text parts joined by newlines) and its images (base64)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        if part.type in ("text", "input_text"):
            texts.append(part.text or "")
        elif part.type == "image_url":
            if part.image_url is None:
                raise BadRequest(f"{where}.content[{j}]: image_url is missing")
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(_image(url, f"{where}.content[{j}]"))
        else:
            raise BadRequest(f"{where}.content[{j}]: unsupported content part {part.type!r}")
    return "\n".join(texts), images


_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)


def _image(url: str, where: str) -> str:
    """A data URL's base64 payload; pollama downloads nothing."""
    if url.startswith(("http://", "https://")):
        raise BadRequest(
            f"{where}: image URLs are not fetched; send the image inline as "
            "data:image/<type>;base64,<data>"
        )
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise BadRequest(f"{where}: image_url must be data:image/<type>;base64,<data>")
    data = match.group(1).strip()
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise BadRequest(f"{where}: the image is not valid base64") from None
    return data


def _call_in(call: ToolCallIn, where: str) -> dict[str, Any]:
    """An assistant's earlier tool call with its JSON-string arguments decoded."""
    arguments: object = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise BadRequest(f"{where}: function.arguments is not valid JSON") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}: function.arguments must be a JSON object")
    converted: dict[str, Any] = {"function": {"name": call.function.name, "arguments": arguments}}
    if call.id:
        converted["id"] = call.id
    return converted


# -- events → chat completions -------------------------------------------------------------


async def _chat_completion(run: Run, reply: _Reply) -> ChatCompletion:
    content: list[str] = []
    thinking: list[str] = []
    calls: list[CallOut] = []
    logprobs: list[Logprob] = []
    finish: Finish | None = None
    async for event in run.events:
        if isinstance(event, Finish):
            finish = event
            continue
        content.append(event.content)
        thinking.append(event.thinking)
        calls.extend(event.tool_calls)
        logprobs.extend(event.logprobs)
    if finish is None:
        raise RuntimeError("the reply ended without a finish")
    text = "".join(content)
    message = ChatMessageOut(
        content=text or (None if calls else ""),
        reasoning="".join(thinking) or None,
        tool_calls=[_call_out(c, streamed=False) for c in calls] or None,
    )
    choice = ChatChoice(
        message=message, finish_reason=_finish_reason(finish), logprobs=_chat_logprobs(logprobs)
    )
    return ChatCompletion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        system_fingerprint=FINGERPRINT,
        choices=[choice],
        usage=_usage(finish),
    )


async def _chat_chunks(
    run: Run, reply: _Reply, include_usage: bool
) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(
        delta: ChatDelta,
        finish_reason: FinishReason | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)
        return ChatCompletionChunk(
            id=reply.id,
            created=reply.created,
            model=reply.model,
            system_fingerprint=FINGERPRINT,
            choices=[choice],
        )

    role: Literal["assistant"] | None = "assistant"  # on the first chunk only
    async for event in run.events:
        if isinstance(event, Delta):
            delta = ChatDelta(
                role=role,
                content=event.content or None,
                reasoning=event.thinking or None,
                tool_calls=[_call_out(c, streamed=True) for c in event.tool_calls] or None,
            )
            yield chunk(delta, logprobs=_chat_logprobs(event.logprobs))
            role = None
            continue
        if role is not None:
            yield chunk(ChatDelta(role=role, content=""))
        yield chunk(ChatDelta(), finish_reason=_finish_reason(event))
        if include_usage:
            yield ChatCompletionChunk(
                id=reply.id,
                created=reply.created,
                model=reply.model,
                system_fingerprint=FINGERPRINT,
                choices=[],
                usage=_usage(event),
            )


def _call_out(call: CallOut, *, streamed: bool) -> ToolCallOut:
    arguments = json.dumps(dict(call.arguments), separators=(",", ":"), ensure_ascii=False)
    return ToolCallOut(
        index=call.index if streamed else None,
        id=call.id,
        function=FunctionCallOut(name=call.name, arguments=arguments),
    )


def _finish_reason(finish: Finish) -> FinishReason:
    if finish.tool_calls:
        return "tool_calls"
    return "length" if finish.done_reason == "length" else "stop"


def _usage(finish: Finish) -> Usage:
    prompt = finish.prompt_eval_count + finish.prompt_cached
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=finish.eval_count,
        total_tokens=prompt + finish.eval_count,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finish.prompt_cached),
    )


def _chat_logprobs(logprobs: Sequence[Logprob]) -> ChoiceLogprobs | None:
    if not logprobs:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.bytes),
                top_logprobs=[
                    TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes))
                    for t in lp.top_logprobs
                ],
            )
            for lp in logprobs
        ]
    )


# -- events → text completions -------------------------------------------------------------


async def _completion(run: Run, reply: _Reply) -> Completion:
    text: list[str] = []
    thinking: list[str] = []
    logprobs: list[Logprob] = []
    finish: Finish | None = None
    async for event in run.events:
        if isinstance(event, Finish):
            finish = event
            continue
        text.append(event.content)
        thinking.append(event.thinking)
        logprobs.extend(event.logprobs)
    if finish is None:
        raise RuntimeError("the reply ended without a finish")
    choice = CompletionChoice(
        text="".join(text),
        finish_reason="length" if finish.done_reason == "length" else "stop",
        logprobs=_completion_logprobs(logprobs),
        reasoning="".join(thinking) or None,
    )
    return Completion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        system_fingerprint=FINGERPRINT,
        choices=[choice],
        usage=_usage(finish),
    )


async def _completion_chunks(
    run: Run, reply: _Reply, include_usage: bool
) -> AsyncIterator[Completion]:
    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(
            id=reply.id,
            created=reply.created,
            model=reply.model,
            system_fingerprint=FINGERPRINT,
            choices=choices,
            usage=usage,
        )

    offset = 0  # text_offset of the next token's logprob
    async for event in run.events:
        if isinstance(event, Delta):
            logprobs = _completion_logprobs(event.logprobs, offset)
            if logprobs is not None:
                offset = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
            yield chunk(
                [
                    CompletionChoice(
                        text=event.content,
                        reasoning=event.thinking or None,
                        logprobs=logprobs,
                    )
                ]
            )
            continue
        reason: Literal["stop", "length"] = "length" if event.done_reason == "length" else "stop"
        yield chunk([CompletionChoice(text="", finish_reason=reason)])
        if include_usage:
            yield chunk([], usage=_usage(event))


def _completion_logprobs(logprobs: Sequence[Logprob], start: int = 0) -> CompletionLogprobs | None:
    if not logprobs:
        return None
    offsets: list[int] = []
    for lp in logprobs:
        offsets.append(start)
        start += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{t.token: t.logprob for t in lp.top_logprobs} for lp in logprobs],
        text_offset=offsets,
    )


# -- embeddings ----------------------------------------------------------------------------


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """Floats, or base64 of their little-endian float32 bytes."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
