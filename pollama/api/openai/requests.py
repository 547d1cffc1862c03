"""OpenAI requests → the engine's calls (``ChatCall``, ``GenerateCall``), refusing what
we cannot honour with a BadRequest before anything runs."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from pollama.api.completion import (
    THINK_LEVELS,
    ChatCall,
    GenerateCall,
)
from pollama.api.lora import lora_scales
from pollama.api.ollama.generate import keep_alive_of
from pollama.api.openai.types import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    ContentPart,
    NamedToolChoice,
    ResponseFormat,
    SamplingRequest,
    ToolCallIn,
)
from pollama.errors import BadRequest

_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)


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
        lora=lora_scales(body.lora),
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
        lora=lora_scales(body.lora),
    )


def _check_n(n: int | None) -> None:
    if n is not None and n != 1:
        raise BadRequest(f"n must be 1 (got {n}): one choice per request is supported")


def include_usage(body: SamplingRequest) -> bool:
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


def input_texts(given: str | list[str] | list[int] | list[list[int]]) -> list[str]:
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
