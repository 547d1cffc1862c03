"""OpenAI's Responses API (``POST /v1/responses``, routed by ``routes``), stateless, over
``pollama.api.completion``.

A request becomes a ``ChatCall``: ``instructions`` a system message, input items
Ollama messages (function calls an assistant's tool calls, their outputs ``tool``
messages naming the tool), flat function tools Ollama's, ``text.format`` a
``format`` and ``reasoning.effort`` a thinking level. Nothing is stored, so
``previous_response_id`` is refused: the client sends the whole conversation.

The reply's output items come in the order the model wrote them (reasoning,
message, function calls). The stream is OpenAI's named events, each with a
``sequence_number``::

    response.created · response.in_progress
    response.output_item.added · (part added · deltas · done)… · response.output_item.done
    response.completed | response.incomplete (max_output_tokens reached)

Errors are raised and answered in OpenAI's shape by the app's handler; after the
first byte, an ``error`` event. There is no ``[DONE]`` line.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pollama.api.completion import CallOut, ChatCall, Finish, Run, function_tool, start_chat
from pollama.api.errors import error_record, openai_body
from pollama.api.events import Block, Closed, Opened, Piece, Record, block_records, respond
from pollama.api.ollama.generate import keep_alive_of, parse_body
from pollama.api.openai.responses_types import (
    FunctionCallItem,
    FunctionCallOut,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputImage,
    InputText,
    InputTokensDetails,
    ItemReference,
    MessageItem,
    MessageOut,
    OutputText,
    OutputTextPart,
    Part,
    ReasoningConfig,
    ReasoningItem,
    ReasoningOut,
    Refusal,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    SummaryText,
)
from pollama.errors import BadRequest

EFFORT_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}
"""``reasoning.effort`` → ``think``."""


async def answer(request: Request) -> Response:
    body = await parse_body(request, ResponsesRequest)
    if body.previous_response_id:
        raise BadRequest(
            "previous_response_id is not supported: pollama stores no responses; "
            "send the whole conversation as input"
        )
    run = await start_chat(request.app.state.pollama, chat_call(body))
    reply = ResponseStream(body, run)
    return await respond(request, reply, body.stream, lambda: reply.response)


# -- request → ChatCall -------------------------------------------------------------------


def chat_call(body: ResponsesRequest) -> ChatCall:
    tools = [
        function_tool(
            tool.name, tool.description, tool.parameters or {"type": "object", "properties": {}}
        )
        for tool in body.tools or ()
    ]
    choice = body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.name
    effort = body.reasoning.effort if body.reasoning is not None else None
    return ChatCall(
        model=body.model,
        messages=ollama_messages(body),
        tools=tools or None,
        tool_choice=choice,
        format=_format(body),
        think=EFFORT_LEVELS[effort] if effort is not None else None,
        options=_options(body),
        keep_alive=keep_alive_of(body.keep_alive),
    )


def _format(body: ResponsesRequest) -> Any:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return "json"
    if fmt.schema_ is None:
        raise BadRequest("text.format of type json_schema needs a schema")
    return fmt.schema_


def _options(body: ResponsesRequest) -> dict[str, Any]:
    options = dict(body.options or {})
    named = {
        "num_predict": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
    }
    options.update({key: value for key, value in named.items() if value is not None})
    return options


def ollama_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The input as Ollama messages. Consecutive assistant items (reasoning, message,
    function calls) make one assistant message, as the model wrote them in one turn."""
    out: list[dict[str, Any]] = []
    if body.instructions:
        out.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        out.append({"role": "user", "content": body.input})
        return out
    names: dict[str, str] = {}  # call_id → function name, for the outputs that follow
    for item in body.input:
        if isinstance(item, MessageItem):
            text, images = _content(item.content)
            if item.role == "assistant":
                _append(_assistant(out), "content", text)
                continue
            role = "system" if item.role in ("system", "developer") else item.role
            message: dict[str, Any] = {"role": role, "content": text}
            if images:
                message["images"] = images
            out.append(message)
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "function": {"name": item.name, "arguments": _args(item)}}
            _assistant(out).setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            out.append(_tool_message(item, names))
        elif isinstance(item, ReasoningItem):
            parts = item.content if item.content else item.summary
            _append(_assistant(out), "thinking", "\n\n".join(p.text for p in parts))
        elif isinstance(item, ItemReference):
            raise BadRequest("item_reference is not supported: pollama stores no items")
    return out


def _assistant(out: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message being assembled: the last one, or a new one."""
    if not out or out[-1]["role"] != "assistant":
        out.append({"role": "assistant", "content": ""})
    return out[-1]


def _append(message: dict[str, Any], key: str, text: str) -> None:
    if text:
        before = message.get(key) or ""
        message[key] = f"{before}\n\n{text}" if before else text


def _args(item: FunctionCallItem) -> dict[str, Any]:
    try:
        arguments = json.loads(item.arguments or "{}")
    except ValueError:
        raise BadRequest(f"function_call {item.call_id!r}: arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"function_call {item.call_id!r}: arguments must be a JSON object")
    return arguments


def _tool_message(item: FunctionCallOutputItem, names: dict[str, str]) -> dict[str, Any]:
    name = names.get(item.call_id)
    if name is None:
        raise BadRequest(
            f"function_call_output refers to an unknown call_id: {item.call_id!r} "
            "(send the function_call item before its output)"
        )
    text, images = _content(item.output)
    message: dict[str, Any] = {
        "role": "tool",
        "content": text,
        "tool_call_id": item.call_id,
        "tool_name": name,
    }
    if images:
        message["images"] = images
    return message


def _content(content: str | Sequence[Part]) -> tuple[str, list[str]]:
    """A message's text (parts a blank line apart) and its images (base64)."""
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        if isinstance(part, InputText | OutputText):
            texts.append(part.text)
        elif isinstance(part, Refusal):
            texts.append(part.refusal)
        elif isinstance(part, InputImage):
            images.append(_image(part))
    return "\n\n".join(t for t in texts if t), images


def _image(part: InputImage) -> str:
    url = part.image_url or ""
    if not url.startswith("data:"):
        raise BadRequest(
            "only data: URLs are supported for input_image (pollama does not fetch "
            "from the internet and stores no files)"
        )
    header, _, data = url.partition(",")
    if not header.endswith(";base64") or not data:
        raise BadRequest("an input_image data: URL must be base64-encoded")
    return data


# -- run → response and events ------------------------------------------------------------


def _in_progress(body: ResponsesRequest) -> ResponseObject:
    """A new response, echoing the request as OpenAI does."""
    fmt = body.text.format if body.text is not None else None
    text = fmt.model_dump(mode="json", by_alias=True, exclude_none=True) if fmt else None
    choice = body.tool_choice
    return ResponseObject(
        id="resp_" + secrets.token_hex(12),
        created_at=int(time.time()),
        model=body.model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=[tool.model_dump(mode="json") for tool in body.tools or ()],
        tool_choice=choice if isinstance(choice, str) else choice.model_dump(mode="json"),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        text={"format": text or {"type": "text"}},
        reasoning=(body.reasoning or ReasoningConfig()).model_dump(),
        metadata=body.metadata or {},
    )


class ResponseStream:
    """The reply to one request: ``events()`` yields the stream's events and builds
    ``response`` as it goes, whole once the events are exhausted."""

    def __init__(self, body: ResponsesRequest, run: Run) -> None:
        self.response = _in_progress(body)
        self._run = run
        self._sequence = 0

    def record(self, kind: str, **fields: Any) -> Record:
        """One event: its type and the next sequence number first."""
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def error(self, exc: BaseException) -> Record:
        """A failure after the first byte, as OpenAI's ``error`` event."""
        body = error_record(exc, openai_body)["error"]
        return self.record(
            "error",
            code=body["code"] or body["type"],
            message=body["message"],
            param=None,
            error=body,
        )

    def events(self) -> AsyncIterator[Record]:
        def opening() -> list[Record]:
            return [
                self.record("response.created", response=self._dump()),
                self.record("response.in_progress", response=self._dump()),
            ]

        return block_records(self._run.events, opening, self._records)

    def _dump(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    def _records(self, block: Block) -> list[Record]:
        output = self.response.output
        if isinstance(block, Opened):
            if block.kind == "thinking":
                output.append(ReasoningOut(id="rs_" + secrets.token_hex(12)))
                return [self._added(), self._summary_part("added", "")]
            output.append(MessageOut(id="msg_" + secrets.token_hex(12)))
            return [self._added(), self._content_part("added", "")]
        if isinstance(block, Piece):
            where = self._where()
            if block.kind == "thinking":
                return [
                    self.record(
                        "response.reasoning_summary_text.delta",
                        **where,
                        summary_index=0,
                        delta=block.text,
                    )
                ]
            return [
                self.record(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=block.text,
                    logprobs=[],
                )
            ]
        if isinstance(block, Closed):
            return self._closed(block)
        if isinstance(block, CallOut):
            return self._function_call(block)
        return self._finish(block)

    def _where(self) -> dict[str, Any]:
        index = len(self.response.output) - 1
        return {"item_id": self.response.output[index].id, "output_index": index}

    def _added(self) -> Record:
        index = len(self.response.output) - 1
        item = self.response.output[index].model_dump(mode="json")
        return self.record("response.output_item.added", output_index=index, item=item)

    def _done(self) -> Record:
        index = len(self.response.output) - 1
        item = self.response.output[index].model_dump(mode="json")
        return self.record("response.output_item.done", output_index=index, item=item)

    def _summary_part(self, stage: str, text: str) -> Record:
        return self.record(
            f"response.reasoning_summary_part.{stage}",
            **self._where(),
            summary_index=0,
            part=SummaryText(text=text).model_dump(mode="json"),
        )

    def _content_part(self, stage: str, text: str) -> Record:
        return self.record(
            f"response.content_part.{stage}",
            **self._where(),
            content_index=0,
            part=OutputTextPart(text=text).model_dump(mode="json"),
        )

    def _closed(self, block: Closed) -> list[Record]:
        item = self.response.output[-1]
        where = self._where()
        if isinstance(item, ReasoningOut):
            item.summary = [SummaryText(text=block.text)]
            return [
                self.record(
                    "response.reasoning_summary_text.done",
                    **where,
                    summary_index=0,
                    text=block.text,
                ),
                self._summary_part("done", block.text),
                self._done(),
            ]
        assert isinstance(item, MessageOut)
        item.content = [OutputTextPart(text=block.text)]
        item.status = "completed"
        return [
            self.record(
                "response.output_text.done",
                **where,
                content_index=0,
                text=block.text,
                logprobs=[],
            ),
            self._content_part("done", block.text),
            self._done(),
        ]

    def _function_call(self, call: CallOut) -> list[Record]:
        item = FunctionCallOut(id="fc_" + secrets.token_hex(12), call_id=call.id, name=call.name)
        self.response.output.append(item)
        records = [self._added()]
        arguments = json.dumps(dict(call.arguments))
        where = self._where()
        records.append(
            self.record("response.function_call_arguments.delta", **where, delta=arguments)
        )
        records.append(
            self.record(
                "response.function_call_arguments.done",
                **where,
                name=call.name,
                arguments=arguments,
            )
        )
        item.arguments = arguments
        item.status = "completed"
        records.append(self._done())
        return records

    def _finish(self, finish: Finish) -> list[Record]:
        response = self.response
        prompt = finish.prompt_eval_count + finish.prompt_cached  # OpenAI counts cached ones
        response.usage = ResponseUsage(
            input_tokens=prompt,
            input_tokens_details=InputTokensDetails(cached_tokens=finish.prompt_cached),
            output_tokens=finish.eval_count,
            total_tokens=prompt + finish.eval_count,
        )
        if finish.done_reason == "length" and not finish.tool_calls:
            response.status = "incomplete"
            response.incomplete_details = IncompleteDetails()
            return [self.record("response.incomplete", response=self._dump())]
        response.status = "completed"
        return [self.record("response.completed", response=self._dump())]
