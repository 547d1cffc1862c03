"""Anthropic's Messages API (``POST /v1/messages``, routed by ``routes``) over
``pollama.api.completion``.

A request becomes a ``ChatCall``: the system prompt a system message, content
blocks Ollama messages (tool results ``tool`` messages naming their tool, images
base64 strings beside the text), tools Ollama's function tools, ``max_tokens``
``num_predict``, ``thinking``'s budget the runner's thinking budget and
``output_config.format``'s JSON schema a ``format``. The reply
comes back as content blocks in the order the model wrote them (thinking, text,
tool uses), streamed as Anthropic's named events::

    message_start
    content_block_start · content_block_delta… · content_block_stop   (per block)
    message_delta (stop_reason, usage) · message_stop

A whole tool call is one ``input_json_delta``. Errors are raised and answered in
Anthropic's shape by the app's handler; after the first byte, an ``error`` event.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pollama.api.anthropic.types import (
    ContentOut,
    ImageBlock,
    ImageSource,
    InputBlock,
    Message,
    MessagesRequest,
    StopReason,
    TextBlock,
    TextOut,
    ThinkingBlock,
    ThinkingOut,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    Usage,
)
from pollama.api.completion import CallOut, ChatCall, Finish, Run, function_tool, start_chat
from pollama.api.errors import anthropic_body, error_record
from pollama.api.events import Block, Closed, Opened, Piece, Record, block_records, respond
from pollama.api.ollama.generate import keep_alive_of, parse_body
from pollama.errors import BadRequest


async def answer(request: Request) -> Response:
    body = await parse_body(request, MessagesRequest)
    run = await start_chat(request.app.state.pollama, chat_call(body))
    reply = MessageStream(body.model, run)
    return await respond(request, reply, body.stream, lambda: reply.message)


# -- request → ChatCall -------------------------------------------------------------------


def chat_call(body: MessagesRequest) -> ChatCall:
    tools = [
        function_tool(tool.name, tool.description, tool.input_schema) for tool in body.tools or ()
    ]
    think: bool | None = None
    budget: int | None = None
    if body.thinking is not None:
        think = body.thinking.type != "disabled"
        budget = body.thinking.budget_tokens if body.thinking.type == "enabled" else None
    fmt = body.output_config.format if body.output_config is not None else None
    return ChatCall(
        model=body.model,
        messages=ollama_messages(body),
        tools=tools or None,
        tool_choice=_tool_choice(body.tool_choice),
        format=fmt.schema_ if fmt is not None else None,
        think=think,
        think_budget=budget,
        options=_options(body),
        keep_alive=keep_alive_of(body.keep_alive),
    )


def _options(body: MessagesRequest) -> dict[str, Any]:
    options = dict(body.options or {})
    options["num_predict"] = body.max_tokens
    named = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stop": body.stop_sequences,
    }
    options.update({key: value for key, value in named.items() if value is not None})
    return options


def _tool_choice(choice: ToolChoice | None) -> str:
    if choice is None or choice.type == "auto":
        return "auto"
    if choice.type == "any":
        return "required"
    if choice.type == "none":
        return "none"
    if not choice.name:
        raise BadRequest('tool_choice of type "tool" needs the name of a tool')
    return choice.name


def ollama_messages(body: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as Ollama messages; tool results name the tool the model called."""
    out: list[dict[str, Any]] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else _join(body.system)
        out.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id → tool name, for the results that follow
    for message in body.messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(_assistant(message.content, names))
        else:
            out.extend(_user(message.content, names))
    return out


def _assistant(content: Sequence[InputBlock], names: dict[str, str]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": _join(content)}
    thinking = "".join(b.thinking for b in content if isinstance(b, ThinkingBlock))
    if thinking:
        message["thinking"] = thinking
    calls = [b for b in content if isinstance(b, ToolUseBlock)]
    if calls:
        names.update((call.id, call.name) for call in calls)
        message["tool_calls"] = [
            {"id": call.id, "function": {"name": call.name, "arguments": call.input}}
            for call in calls
        ]
    return message


def _user(content: Sequence[InputBlock], names: dict[str, str]) -> list[dict[str, Any]]:
    """Tool results first, as tool messages, then the user's own text and images."""
    out: list[dict[str, Any]] = []
    for result in (b for b in content if isinstance(b, ToolResultBlock)):
        name = names.get(result.tool_use_id)
        if name is None:
            raise BadRequest(
                f"tool_result refers to an unknown tool_use_id: {result.tool_use_id!r}"
            )
        parts = [result.content] if isinstance(result.content, str) else result.content
        text = _join(parts)
        tool: dict[str, Any] = {
            "role": "tool",
            "content": f"Error: {text}" if result.is_error else text,
            "tool_call_id": result.tool_use_id,
            "tool_name": name,
        }
        images = _images(parts)
        if images:
            tool["images"] = images
        out.append(tool)
    text = _join(content)
    images = _images(content)
    if text or images or not out:
        user: dict[str, Any] = {"role": "user", "content": text}
        if images:
            user["images"] = images
        out.append(user)
    return out


def _join(blocks: Sequence[object]) -> str:
    """The text blocks' text, a blank line between blocks."""
    parts = [b if isinstance(b, str) else b.text for b in blocks if isinstance(b, str | TextBlock)]
    return "\n\n".join(p for p in parts if p)


def _images(blocks: Sequence[object]) -> list[str]:
    return [_image(b.source) for b in blocks if isinstance(b, ImageBlock)]


def _image(source: ImageSource) -> str:
    if source.type == "url":
        raise BadRequest(
            "image URLs are not supported (pollama does not fetch from the internet): "
            "send the image as base64"
        )
    if not source.data:
        raise BadRequest("a base64 image source needs its data")
    return source.data


# -- run → message and events ------------------------------------------------------------


class MessageStream:
    """The reply to one request: ``events()`` yields Anthropic's stream events and
    builds ``message`` as it goes, whole once the events are exhausted."""

    def __init__(self, model: str, run: Run) -> None:
        self.message = Message(id="msg_" + secrets.token_hex(12), model=model)
        self._run = run

    def error(self, exc: BaseException) -> Record:
        return error_record(exc, anthropic_body)

    def events(self) -> AsyncIterator[Record]:
        def opening() -> list[Record]:
            return [{"type": "message_start", "message": self.message.model_dump(mode="json")}]

        return block_records(self._run.events, opening, self._records)

    def _records(self, block: Block) -> list[Record]:
        content = self.message.content
        index = len(content) - 1
        if isinstance(block, Opened):
            new: ContentOut = TextOut(text="") if block.kind == "text" else ThinkingOut(thinking="")
            content.append(new)
            return [_start(len(content) - 1, new)]
        if isinstance(block, Piece):
            if block.kind == "text":
                delta = {"type": "text_delta", "text": block.text}
            else:
                delta = {"type": "thinking_delta", "thinking": block.text}
            return [{"type": "content_block_delta", "index": index, "delta": delta}]
        if isinstance(block, Closed):
            last = content[index]
            if isinstance(last, TextOut):
                last.text = block.text
            elif isinstance(last, ThinkingOut):
                last.thinking = block.text
            return [{"type": "content_block_stop", "index": index}]
        if isinstance(block, CallOut):
            return self._tool_use(block)
        return self._finish(block)

    def _tool_use(self, call: CallOut) -> list[Record]:
        use = ToolUseOut(id="toolu_" + call.id.removeprefix("call_"), name=call.name, input={})
        self.message.content.append(use)
        index = len(self.message.content) - 1
        records = [_start(index, use)]
        use.input = dict(call.arguments)
        delta = {"type": "input_json_delta", "partial_json": json.dumps(use.input)}
        records.append({"type": "content_block_delta", "index": index, "delta": delta})
        records.append({"type": "content_block_stop", "index": index})
        return records

    def _finish(self, finish: Finish) -> list[Record]:
        reason: StopReason = "end_turn"
        if finish.tool_calls:
            reason = "tool_use"
        elif finish.done_reason == "length":
            reason = "max_tokens"
        usage = Usage(
            input_tokens=finish.prompt_eval_count,
            output_tokens=finish.eval_count,
            cache_read_input_tokens=finish.prompt_cached,
        )
        self.message.stop_reason = reason
        self.message.usage = usage
        return [
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": usage.model_dump(mode="json"),
            },
            {"type": "message_stop"},
        ]


def _start(index: int, block: ContentOut) -> Record:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": block.model_dump(mode="json"),
    }
