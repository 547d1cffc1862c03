"""Anthropic's Messages API (``/v1/messages``) driven through the official ``anthropic``
client, and its event stream read byte by byte, against a real ``pollama serve``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import anthropic
import pytest
from serving import Server
from toolmodel import WEATHER_TOOL, create_tool_model

from pollama.api.anthropic.messages import MessageStream
from pollama.api.anthropic.types import TextOut, ThinkingOut, ToolUseOut
from pollama.api.completion import CallOut, Delta, Event, Finish, Run
from pollama.api.events import event_stream
from pollama.errors import RunnerDied

# The client no longer takes sampling parameters; older clients sent them in the body.
GREEDY: dict[str, Any] = {"max_tokens": 24, "extra_body": {"temperature": 0, "top_k": 1}}
SAMPLING = GREEDY["extra_body"]
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL = {
    "name": WEATHER_TOOL["function"]["name"],
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
UNITS = WEATHER_TOOL["function"]["parameters"]["properties"]["unit"]["enum"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("anthropic"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as connected:
        yield connected


@pytest.fixture(scope="module")
def tool_model(server: Server) -> str:
    return create_tool_model(server.url)


def events_of(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return server.named_events("/v1/messages", body)


def test_message(client: anthropic.Anthropic):
    message = client.messages.create(model="smollm2", messages=QUESTION, **GREEDY)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "smollm2"
    (block,) = message.content
    assert block.type == "text" and block.text.strip()
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 24 and message.usage.input_tokens > 0


def test_streamed_equals_whole(client: anthropic.Anthropic):
    with client.messages.stream(model="smollm2", messages=QUESTION, **GREEDY) as stream:
        pieces = list(stream.text_stream)
        streamed = stream.get_final_message()
    whole = client.messages.create(model="smollm2", messages=QUESTION, **GREEDY)
    assert len(pieces) > 1, "the text arrives in pieces"
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert "".join(pieces) == whole.content[0].text  # type: ignore[union-attr]
    assert streamed.stop_reason == whole.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert streamed.usage.input_tokens > 0


def test_system_prompt(client: anthropic.Anthropic):
    system = "You are a pirate. Answer like one."
    plain = client.messages.create(model="smollm2", messages=QUESTION, **GREEDY)
    said = client.messages.create(model="smollm2", messages=QUESTION, system=system, **GREEDY)
    blocks = client.messages.create(
        model="smollm2", messages=QUESTION, system=[{"type": "text", "text": system}], **GREEDY
    )
    # Usage is no witness: a prompt served from the runner's cache counts only new tokens.
    assert said.content != plain.content
    assert said.content == blocks.content


def test_unknown_model_is_not_found(client: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", messages=QUESTION, **GREEDY)
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_bad_requests(client: anthropic.Anthropic):
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError, match="base64"):
        client.messages.create(
            model="smollm2", messages=[{"role": "user", "content": [image]}], **GREEDY
        )
    result = {"type": "tool_result", "tool_use_id": "toolu_none", "content": "Sunny"}
    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        client.messages.create(
            model="smollm2", messages=[{"role": "user", "content": [result]}], **GREEDY
        )


def _tool_use(message: anthropic.types.Message) -> anthropic.types.ToolUseBlock:
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert isinstance(use.input, dict) and isinstance(use.input["city"], str)
    assert use.input["unit"] in UNITS
    return use


def test_tool_use(client: anthropic.Anthropic, tool_model: str):
    request: dict[str, Any] = {
        "model": tool_model,
        "messages": WEATHER,
        "tools": [TOOL],
        "tool_choice": {"type": "any"},
        **GREEDY,
        "max_tokens": 64,
    }
    whole = _tool_use(client.messages.create(**request))
    with client.messages.stream(**request) as stream:
        streamed = _tool_use(stream.get_final_message())
    assert streamed.input == whole.input


def test_tool_result_round_trip(client: anthropic.Anthropic, tool_model: str):
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather"}
    call["input"] = {"city": "Paris", "unit": "celsius"}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 degrees"}
    messages = [*WEATHER, {"role": "assistant", "content": [call]}]
    messages.append({"role": "user", "content": [result]})
    reply = client.messages.create(
        model=tool_model,
        messages=messages,
        tools=[TOOL],
        tool_choice={"type": "none"},
        **GREEDY,
    )
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text.strip()  # type: ignore[union-attr]


def test_thinking_block_comes_first(client: anthropic.Anthropic, tool_model: str):
    message = client.messages.create(
        model=tool_model,
        messages=QUESTION,
        thinking={"type": "enabled", "budget_tokens": 16},
        **{**GREEDY, "max_tokens": 48},
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock) and thinking.thinking.strip()
    assert isinstance(text, anthropic.types.TextBlock) and text.text.strip()
    assert thinking.thinking.strip() not in text.text


def test_thinking_then_an_answer_that_follows_the_schema(server: Server, tool_model: str):
    """The model thinks freely, then its answer is held to the schema (ollama#14645)."""
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "reason": {"type": "string", "maxLength": 40},
        },
        "required": ["colour", "reason"],
    }
    body = {
        "model": tool_model,
        "messages": QUESTION,
        "thinking": {"type": "enabled", "budget_tokens": 12},
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
        **SAMPLING,
        "max_tokens": 120,
    }
    message = server.post("/v1/messages", body).json()
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]
    thinking, text = message["content"]
    assert thinking["thinking"].strip() and "{" not in thinking["thinking"]
    answer = json.loads(text["text"])
    assert (
        set(answer) == {"colour", "reason"}
        and answer["colour"] in schema["properties"]["colour"]["enum"]
    )
    assert message["stop_reason"] == "end_turn"


def test_event_stream_framing(server: Server, tool_model: str):
    body = {
        "model": tool_model,
        "messages": QUESTION,
        "thinking": {"type": "enabled", "budget_tokens": 16},
        **SAMPLING,
        "max_tokens": 48,
    }
    events = events_of(server, body)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and "usage" in start
    # Blocks one after another, indexed in order: start, deltas, stop.
    blocks = [data for name, data in events if name.startswith("content_block")]
    kinds = []
    index = -1
    for data in blocks:
        if data["type"] == "content_block_start":
            index += 1
            kinds.append(data["content_block"]["type"])
        assert data["index"] == index
    assert kinds == ["thinking", "text"]
    assert blocks[0]["type"] == "content_block_start"
    deltas = {d["delta"]["type"] for d in blocks if d["type"] == "content_block_delta"}
    assert deltas == {"thinking_delta", "text_delta"}
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "max_tokens" and final["usage"]["output_tokens"]


def test_tool_use_event_stream(server: Server, tool_model: str):
    body = {
        "model": tool_model,
        "messages": WEATHER,
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        **SAMPLING,
        "max_tokens": 64,
    }
    events = events_of(server, body)
    start = next(d for n, d in events if n == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == start["index"]
    )
    assert json.loads(partial)["unit"] in UNITS
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


# -- the event stream, fed by hand --------------------------------------------------------

FINISH = Finish(
    done_reason="stop",
    tool_calls=0,
    prompt_eval_count=5,
    prompt_eval_duration=1,
    eval_count=7,
    eval_duration=1,
    load_duration=0,
    total_duration=2,
)


def run_of(
    *events: Event, fail: BaseException | None = None, closed: list[bool] | None = None
) -> Run:
    async def source() -> AsyncIterator[Event]:
        try:
            for event in events:
                yield event
            if fail is not None:
                raise fail
        finally:
            if closed is not None:
                closed.append(True)

    return Run(model="m", events=source())


def drain(reply: MessageStream) -> bytes:
    async def read() -> bytes:
        return b"".join([chunk async for chunk in await event_stream(reply)])

    return asyncio.run(read())


def test_blocks_follow_the_reply_in_order():
    call = CallOut(id="call_1", index=0, name="get_weather", arguments={"city": "Paris"})
    run = run_of(
        Delta(thinking="\n"),
        Delta(thinking="Hm."),
        Delta(content="\n\n"),  # held until text follows
        Delta(content="Hi"),
        Delta(content=" there"),
        Delta(tool_calls=(call,)),
        Delta(content="\n"),  # whitespace alone opens no block
        replace(FINISH, tool_calls=1),
    )
    reply = MessageStream("m", run)
    events = [json.loads(c.split(b"data: ")[1]) for c in drain(reply).split(b"\n\n")[:-1]]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[2]["delta"] == {"type": "thinking_delta", "thinking": "\nHm."}
    assert events[9]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    assert reply.message.content == [
        ThinkingOut(thinking="\nHm."),
        TextOut(text="\n\nHi there"),
        ToolUseOut(id="toolu_1", name="get_weather", input={"city": "Paris"}),
    ]
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"] == {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 0,
    }


def test_failure_after_the_first_byte_is_an_error_event():
    reply = MessageStream("m", run_of(Delta(content="Hi"), fail=RunnerDied("the runner exited")))
    last = drain(reply).split(b"\n\n")[-2]
    assert last.split(b"\n")[0] == b"event: error"
    assert json.loads(last.split(b"data: ")[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "the runner exited"},
    }


def test_failure_before_the_first_byte_is_raised():
    closed: list[bool] = []
    reply = MessageStream("m", run_of(fail=RunnerDied("the runner exited"), closed=closed))
    with pytest.raises(RunnerDied):
        asyncio.run(event_stream(reply))
    assert closed == [True]


def test_a_stream_closed_early_closes_the_run():
    closed: list[bool] = []
    reply = MessageStream(
        "m", run_of(Delta(content="a"), Delta(content="b"), FINISH, closed=closed)
    )

    async def read_one() -> bytes:
        stream = await event_stream(reply)
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        return first

    assert asyncio.run(read_one()).startswith(b"event: message_start\n")
    assert closed == [True]
