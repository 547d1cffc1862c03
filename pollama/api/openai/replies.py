"""A run's events → OpenAI's responses: whole completions, or the chunks a stream sends
(the first with ``delta.role``, a last with ``finish_reason``, an optional usage chunk)."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pollama.api.completion import (
    CallOut,
    Delta,
    Finish,
    Run,
)
from pollama.api.openai.types import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCallOut,
    PromptTokensDetails,
    TokenLogprob,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from pollama.protocol.wire import Logprob

FINGERPRINT = "fp_ollama"


FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ResponseIds:
    """What every record of one response repeats."""

    id: str
    created: int
    model: str


def response_ids(prefix: str, model: str) -> ResponseIds:
    return ResponseIds(
        id=f"{prefix}-{secrets.token_hex(12)}", created=int(time.time()), model=model
    )


async def chat_completion(run: Run, reply: ResponseIds) -> ChatCompletion:
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


async def chat_chunks(
    run: Run, reply: ResponseIds, include_usage: bool
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


async def completion(run: Run, reply: ResponseIds) -> Completion:
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


async def completion_chunks(
    run: Run, reply: ResponseIds, include_usage: bool
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


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    """Floats, or base64 of their little-endian float32 bytes."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
