"""pollama's OpenAI-compatible API, driven through the official ``openai`` client and,
for the wire format itself, raw HTTP.

Every test talks to one real ``pollama serve`` subprocess (temporary store, free port)
running the demo model in real runner subprocesses.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from serving import Server
from toolmodel import WEATHER_TOOL, create_tool_model

from pollama.api.openai.requests import chat_call, generate_call, messages_of
from pollama.api.openai.types import ChatCompletionRequest, CompletionRequest
from pollama.errors import BadRequest

MODEL = "smollm2"
COLOURS = [{"role": "user", "content": "Name three colours."}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 24}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("openai"))
    try:
        # Naming the demo model imports it into the (empty) store.
        assert running.post("/api/show", {"model": MODEL}).status_code == 200
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key="pollama", timeout=300, max_retries=0
    ) as connected:
        yield connected


@pytest.fixture(scope="module")
def tool_model(server: Server) -> str:
    return create_tool_model(server.url)


def sse_events(server: Server, path: str, body: dict[str, Any]) -> tuple[str, list[str]]:
    """The response's Content-Type and its events, checked to be exactly ``data: …\\n\\n``."""
    with server.client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        raw = response.read().decode()
    assert raw.endswith("\n\n")
    events = raw.split("\n\n")[:-1]
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event, "one line per event"
        assert event != "data: " and event[len("data: ") :].strip(), "no empty data lines"
    return response.headers["content-type"], [e[len("data: ") :] for e in events]


# -- request mapping (no server) -----------------------------------------------------------

PIXEL = base64.b64encode(b"\x89PNG not really").decode()
PIXEL_URL = f"data:image/png;base64,{PIXEL}"


def test_messages_map_to_ollama_messages():
    request = ChatCompletionRequest.model_validate(
        {
            "model": MODEL,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
                        {"type": "text", "text": "what is it?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "I should check.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": "cold"},
            ],
        }
    )
    assert messages_of(request.messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Look:\nwhat is it?", "images": [PIXEL]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "I should check.",
            "tool_calls": [
                {"id": "call_a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "content": "cold", "tool_call_id": "call_a", "tool_name": "get_weather"},
    ]


def test_chat_call_maps_sampling_format_tools_and_thinking():
    call = chat_call(
        ChatCompletionRequest.model_validate(
            {
                "model": MODEL,
                "messages": COLOURS,
                "temperature": 0.5,
                "max_tokens": 10,
                "max_completion_tokens": 20,
                "stop": "END",
                "seed": 3,
                "options": {"num_ctx": 2048, "temperature": 0.9, "top_k": 5},
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": COLOUR},
                },
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "reasoning_effort": "none",
                "keep_alive": "1m",
                "logprobs": True,
                "top_logprobs": 2,
            }
        )
    )
    assert call.options == {
        "num_ctx": 2048,
        "temperature": 0.5,
        "top_k": 5,
        "num_predict": 20,
        "stop": ["END"],
        "seed": 3,
    }
    assert call.format == COLOUR and call.tool_choice == "get_weather"
    assert call.think is False and call.keep_alive == 60
    assert call.logprobs and call.top_logprobs == 2
    json_mode = chat_call(
        ChatCompletionRequest.model_validate(
            {
                "model": MODEL,
                "messages": COLOURS,
                "response_format": {"type": "json_object"},
                "reasoning_effort": "high",
            }
        )
    )
    assert json_mode.format == "json" and json_mode.think == "high"
    assert json_mode.tool_choice == "auto" and json_mode.options == {}


def test_generate_call_maps_prompt_and_logprobs():
    call = generate_call(
        CompletionRequest.model_validate(
            {"model": MODEL, "prompt": ["Hi"], "suffix": "end", "logprobs": 3, "max_tokens": 5}
        )
    )
    assert call.prompt == "Hi" and call.suffix == "end" and call.options == {"num_predict": 5}
    assert call.logprobs and call.top_logprobs == 3
    with pytest.raises(BadRequest):
        generate_call(CompletionRequest.model_validate({"model": MODEL, "prompt": [1, 2]}))


@pytest.mark.parametrize(
    "url",
    ["https://example.com/cat.png", "data:text/plain;base64,aGk=", "data:image/png;base64,@@"],
)
def test_images_must_be_inline_base64(url: str):
    request = ChatCompletionRequest.model_validate(
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ],
        }
    )
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]"):
        messages_of(request.messages)


# -- chat ----------------------------------------------------------------------------------


def test_chat_plain(client: openai.OpenAI):
    reply = client.chat.completions.create(model=MODEL, messages=COLOURS, **GREEDY)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == MODEL and reply.system_fingerprint == "fp_ollama" and reply.created
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.message.tool_calls is None
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == GREEDY["max_tokens"]
    else:
        assert choice.finish_reason == "stop"


def test_usage_counts_the_whole_prompt_and_what_was_cached(client: openai.OpenAI):
    messages = [{"role": "user", "content": "Tell me about prompt caches, in one line."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    again = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    assert first.usage is not None and again.usage is not None
    # The same prompt is the same number of tokens, whatever the cache held.
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 10
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.usage.total_tokens == again.usage.prompt_tokens + again.usage.completion_tokens


def test_chat_streamed_equals_whole(client: openai.OpenAI):
    whole = client.chat.completions.create(model=MODEL, messages=COLOURS, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=COLOURS,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    *body, finish, usage = chunks
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.tool_calls is None
    assert all(c.choices[0].finish_reason is None for c in body)
    assert usage.choices == [] and usage.usage is not None
    assert whole.usage is not None
    assert usage.usage.completion_tokens == whole.usage.completion_tokens
    assert usage.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in body)
    assert streamed == whole.choices[0].message.content


def test_chat_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI):
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=COLOURS, stream=True, **GREEDY)
    )
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=COLOURS)
    assert "no-such-model" in missing.value.message and "not found" in missing.value.message
    assert missing.value.type == "not_found_error" and missing.value.code == "model_not_found"


def test_options_extension_sets_num_ctx_and_openai_fields_win(
    client: openai.OpenAI, server: Server
):
    # Larger than the default: a loaded runner serves a smaller context without reloading.
    reply = client.chat.completions.create(
        model=MODEL,
        messages=COLOURS,
        temperature=0,
        max_tokens=3,
        extra_body={"options": {"num_ctx": 6144, "num_predict": 10}, "keep_alive": "5m"},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert reply.choices[0].finish_reason == "length"
    running = {m["model"]: m for m in server.client.get("/api/ps").json()["models"]}
    assert running["smollm2:latest"]["context_length"] == 6144


def test_developer_role_and_text_parts(client: openai.OpenAI):
    plain = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *COLOURS],
        **GREEDY,
    )
    parts = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Name three colours."}]},
        ],
        **GREEDY,
    )
    # A developer message is a system message; one text part is the plain string.
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_image_urls_are_not_downloaded(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
        )
    assert "data:image" in refused.value.message


def test_reasoning_effort_needs_a_thinking_model(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=COLOURS, reasoning_effort="low", **GREEDY
        )
    assert "thinking" in refused.value.message


def test_reasoning_is_reported_apart_from_content(client: openai.OpenAI, tool_model: str):
    # The tool model's template has <think> tags: the prompt opens the block, and the
    # demo model never closes it (it ends, or max_tokens does, while still thinking).
    reply = client.chat.completions.create(
        model=tool_model, messages=COLOURS, reasoning_effort="low", **GREEDY
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason in ("stop", "length")
    thinking = getattr(message, "reasoning", None)
    assert isinstance(thinking, str) and thinking.strip()
    assert "<think>" not in thinking and not message.content
    chunks = list(
        client.chat.completions.create(
            model=tool_model, messages=COLOURS, reasoning_effort="low", stream=True, **GREEDY
        )
    )
    streamed = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks)
    assert streamed == thinking


# -- structured output ---------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "address"],
    "additionalProperties": False,
}
COLOUR = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}
PEOPLE = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "minItems": 1,
    "maxItems": 3,
}


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema the schemas above use."""
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind == "object":
        if not isinstance(value, dict) or not set(schema["required"]) <= set(value):
            return False
        properties = schema["properties"]
        if schema.get("additionalProperties") is False and not set(value) <= set(properties):
            return False
        return all(conforms(v, properties[k]) for k, v in value.items() if k in properties)
    if kind == "array":
        if not isinstance(value, list):
            return False
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(conforms(item, schema["items"]) for item in value)
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    if kind == "integer":
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and schema.get("minimum", value) <= value <= schema.get("maximum", value)
        )
    return True


def test_conforms_rejects_what_it_should():
    assert conforms({"colour": "red"}, COLOUR) and not conforms({"colour": "pink"}, COLOUR)
    assert not conforms([], PEOPLE) and not conforms([{"name": "a"}], PEOPLE)
    assert not conforms({"name": "a", "address": {"city": "b", "zip": "1"}}, PERSON)


@pytest.mark.parametrize(
    ("prompt", "schema"),
    [
        ("Invent a person and their address.", PERSON),
        ("Pick a colour.", COLOUR),
        ("List two people with their ages.", PEOPLE),
    ],
    ids=["nested-object", "enum", "array-of-objects"],
)
def test_json_schema_output_conforms(client: openai.OpenAI, prompt: str, schema: dict[str, Any]):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        seed=7,
        max_tokens=200,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    content = reply.choices[0].message.content
    assert content is not None
    assert conforms(json.loads(content), schema), content


def test_json_object_output_parses(client: openai.OpenAI):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": 'A JSON object of a cat\'s "name" and "age".'}],
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("keyword", "schema"),
    [
        ("not", {"type": "object", "not": {"required": ["x"]}}),
        ("if", {"type": "object", "if": {"required": ["x"]}, "then": {"required": ["y"]}}),
    ],
)
def test_unsupported_schema_is_refused_naming_the_keyword(
    client: openai.OpenAI, keyword: str, schema: dict[str, Any]
):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=COLOURS,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert f"'{keyword}'" in refused.value.message
    assert refused.value.type == "invalid_request_error"


# -- tools ---------------------------------------------------------------------------------

WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
UNITS = WEATHER_TOOL["function"]["parameters"]["properties"]["unit"]["enum"]


def check_weather_arguments(arguments: str) -> dict[str, Any]:
    decoded = json.loads(arguments)
    assert isinstance(decoded["city"], str) and decoded["unit"] in UNITS
    return decoded  # type: ignore[no-any-return]


def test_required_tool_call(client: openai.OpenAI, tool_model: str):
    reply = client.chat.completions.create(
        model=tool_model,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)


def test_named_tool_choice_streamed(client: openai.OpenAI, tool_model: str):
    chunks = list(
        client.chat.completions.create(
            model=tool_model,
            messages=WEATHER,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=64,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            assert delta.type in (None, "function")
            entry["id"] += delta.id or ""
            if delta.function:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    check_weather_arguments(calls[0]["arguments"])


def test_tool_round_trip(client: openai.OpenAI, tool_model: str):
    asked = client.chat.completions.create(
        model=tool_model,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    message = asked.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    history = [
        *WEATHER,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    answer = client.chat.completions.create(
        model=tool_model, messages=history, tools=[WEATHER_TOOL], tool_choice="none", **GREEDY
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content and answer.choices[0].message.content.strip()


def test_malformed_tool_call_arguments_are_refused(client: openai.OpenAI, tool_model: str):
    history = [
        *WEATHER,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{not json"},
                }
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=tool_model, messages=history, tools=[WEATHER_TOOL])
    assert "arguments" in refused.value.message


# -- text completions ----------------------------------------------------------------------

PROMPT = "The three primary colours are"


def test_completion_plain_and_streamed(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.system_fingerprint == "fp_ollama"
    (choice,) = whole.choices
    assert choice.text.strip() and choice.finish_reason in ("stop", "length")
    assert whole.usage and whole.usage.completion_tokens <= GREEDY["max_tokens"]
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=[PROMPT],
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    *body, finish, usage = chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in body) == choice.text
    assert finish.choices[0].finish_reason == choice.finish_reason and finish.choices[0].text == ""
    assert usage.choices == [] and usage.usage
    assert usage.usage.completion_tokens == whole.usage.completion_tokens


def test_completion_stop_sequence(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    text = whole.choices[0].text
    words = text.split()
    assert len(words) > 2
    stopped = client.completions.create(model=MODEL, prompt=PROMPT, stop=words[2], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(words[2])]


def test_completion_logprobs(client: openai.OpenAI):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, logprobs=2, **GREEDY)
    logprobs = reply.choices[0].logprobs
    assert logprobs and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset and logprobs.text_offset[0] == 0


def test_chat_logprobs(client: openai.OpenAI):
    reply = client.chat.completions.create(
        model=MODEL, messages=COLOURS, logprobs=True, top_logprobs=3, **GREEDY
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs and logprobs.content
    assert "".join(t.token for t in logprobs.content) == reply.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in logprobs.content)


# -- embeddings ----------------------------------------------------------------------------

TEXTS = ["The sky is blue.", "Grass is green."]


def test_embeddings_float_and_base64(client: openai.OpenAI):
    floats = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert floats.object == "list" and floats.model == MODEL
    assert [d.index for d in floats.data] == [0, 1]
    assert all(d.object == "embedding" for d in floats.data)
    vectors = [d.embedding for d in floats.data]
    assert len(vectors[0]) == 576 and vectors[0] != vectors[1]
    for vector in vectors:
        assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-5)
    assert floats.usage.prompt_tokens > 0
    assert floats.usage.total_tokens == floats.usage.prompt_tokens
    encoded = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
    for datum, vector in zip(encoded.data, vectors, strict=True):
        assert isinstance(datum.embedding, str)
        raw = base64.b64decode(datum.embedding)
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert len(decoded) == 576
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, vector, strict=True))
    # The client's default asks for base64 and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=TEXTS[0])
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(default.data[0].embedding, vectors[0], strict=True)
    )


def test_embeddings_dimensions(client: openai.OpenAI):
    full = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    sliced = client.embeddings.create(
        model=MODEL, input=TEXTS[0], dimensions=64, encoding_format="float"
    )
    vector = sliced.data[0].embedding
    assert len(vector) == 64 and math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-5)
    prefix = full.data[0].embedding[:64]
    scale = math.hypot(*prefix)
    assert all(
        math.isclose(a, b / scale, abs_tol=1e-4) for a, b in zip(vector, prefix, strict=True)
    )
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=100_000)


def test_embeddings_refuse_token_arrays(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input=[[1, 2, 3]], encoding_format="float")
    assert "token" in refused.value.message


# -- models --------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI):
    cards = {card.id: card for card in client.models.list()}
    card = cards["smollm2:latest"]
    assert card.object == "model" and card.owned_by == "library"
    assert 1_500_000_000 < card.created
    retrieved = client.models.retrieve(MODEL)
    assert retrieved.id == "smollm2:latest" and retrieved.created == card.created
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_retrieve_an_invalid_name_is_not_found(server: Server):
    response = server.client.get("/v1/models/-not-a-name")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_models_in_a_namespace(client: openai.OpenAI, server: Server):
    copied = server.post("/api/copy", {"source": MODEL, "destination": "someone/copied:v1"})
    assert copied.status_code == 200
    try:
        card = client.models.retrieve("someone/copied:v1")
        assert card.id == "someone/copied:v1" and card.owned_by == "someone"
        assert "someone/copied:v1" in [c.id for c in client.models.list()]
    finally:
        server.client.request("DELETE", "/api/delete", json={"model": "someone/copied:v1"})


# -- the wire format, byte by byte ---------------------------------------------------------


def test_chat_sse_framing(server: Server):
    content_type, events = sse_events(
        server,
        "/v1/chat/completions",
        {"model": MODEL, "messages": COLOURS, "stream": True, **GREEDY},
    )
    assert content_type.startswith("text/event-stream")
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in c for c in chunks)


def test_completion_sse_framing(server: Server):
    content_type, events = sse_events(
        server,
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": PROMPT,
            "stream": True,
            "stream_options": {"include_usage": True},
            **GREEDY,
        },
    )
    assert content_type.startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_non_streamed_json_shape(server: Server):
    response = server.post("/v1/chat/completions", {"model": MODEL, "messages": COLOURS, **GREEDY})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    }
    (choice,) = body["choices"]
    assert choice["logprobs"] is None and set(choice["message"]) == {"role", "content"}
    assert set(body["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
    }


def test_abandoned_stream_frees_its_slot(server: Server):
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    body = {"model": MODEL, "messages": story, "stream": True, "temperature": 0}
    with server.client.stream(
        "POST", "/v1/chat/completions", json={**body, "max_tokens": 3000}
    ) as response:
        assert next(response.iter_lines()).startswith("data: {")
    # One slot: the next request is served only once the abandoned one has let go of it,
    # long before 3000 tokens could have been generated.
    after = server.client.post(
        "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=120
    )
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 4


def test_error_before_streaming_is_a_status(server: Server):
    response = server.post(
        "/v1/chat/completions", {"model": "no-such-model", "messages": COLOURS, "stream": True}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "model 'no-such-model' not found",
            "type": "not_found_error",
            "param": None,
            "code": "model_not_found",
        }
    }
