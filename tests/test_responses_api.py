"""OpenAI's Responses API (``/v1/responses``, stateless) driven through the official
``openai`` client, and its event stream read byte by byte, against a real ``pollama serve``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from serving import Server
from toolmodel import WEATHER_TOOL, create_tool_model

from pollama.api.completion import CallOut, Delta, Event, Finish, Run
from pollama.api.events import event_stream
from pollama.api.openai.responses import ResponseStream
from pollama.api.openai.responses_types import ResponsesRequest
from pollama.errors import RunnerDied

GREEDY: dict[str, Any] = {"max_output_tokens": 24, "temperature": 0}
QUESTION = "Why is the sky blue?"
TOOL = {"type": "function", **WEATHER_TOOL["function"]}
UNITS = WEATHER_TOOL["function"]["parameters"]["properties"]["unit"]["enum"]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("responses"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as connected:
        yield connected


@pytest.fixture(scope="module")
def tool_model(server: Server) -> str:
    return create_tool_model(server.url)


def events_of(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return server.named_events("/v1/responses", body)


def test_response(client: openai.OpenAI):
    response = client.responses.create(model="smollm2", input=QUESTION, **GREEDY)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == "smollm2" and response.output_text.strip()
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.status == "incomplete"
    assert response.incomplete_details and response.incomplete_details.reason == (
        "max_output_tokens"
    )
    usage = response.usage
    assert usage and usage.output_tokens == 24 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_instructions(client: openai.OpenAI):
    plain = client.responses.create(model="smollm2", input=QUESTION, **GREEDY)
    told = client.responses.create(
        model="smollm2", input=QUESTION, instructions="Answer like a pirate.", **GREEDY
    )
    assert told.instructions == "Answer like a pirate."
    # Usage is no witness: a prompt served from the runner's cache counts only new tokens.
    assert told.output_text != plain.output_text


def test_streamed_equals_whole(client: openai.OpenAI):
    messages = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    stream = client.responses.create(model="smollm2", input=messages, stream=True, **GREEDY)
    events = list(stream)
    whole = client.responses.create(model="smollm2", input=messages, **GREEDY)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == whole.output_text
    assert final.usage and whole.usage
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_json_schema_format(client: openai.OpenAI):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "sunny": {"type": "boolean"},
        },
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}
    response = client.responses.create(
        model="smollm2",
        input="Describe the weather in Paris as JSON.",
        text={"format": fmt},  # type: ignore[typeddict-item]
        **{**GREEDY, "max_output_tokens": 64},
    )
    assert response.status == "completed"
    answer = json.loads(response.output_text)
    assert set(answer) == {"city", "sunny"}
    assert isinstance(answer["city"], str) and len(answer["city"]) <= 16
    assert isinstance(answer["sunny"], bool)


def test_function_call_round_trip(client: openai.OpenAI, tool_model: str):
    request: dict[str, Any] = {"model": tool_model, "tools": [TOOL], **GREEDY}
    response = client.responses.create(
        input=WEATHER,  # type: ignore[arg-type]
        tool_choice="required",
        **{**request, "max_output_tokens": 64},
    )
    assert response.status == "completed"
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    arguments = json.loads(call.arguments)
    assert isinstance(arguments["city"], str) and arguments["unit"] in UNITS
    follow = [
        *WEATHER,
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 °C"},
    ]
    reply = client.responses.create(input=follow, tool_choice="none", **request)  # type: ignore[arg-type]
    assert [item.type for item in reply.output] == ["message"]
    assert reply.output_text.strip()


def test_errors(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input=QUESTION, **GREEDY)
    assert caught.value.body["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(
            model="smollm2", input=QUESTION, previous_response_id="resp_1", **GREEDY
        )
    output = {"type": "function_call_output", "call_id": "call_none", "output": "Sunny"}
    with pytest.raises(openai.BadRequestError, match="call_id"):
        client.responses.create(model="smollm2", input=[output], **GREEDY)  # type: ignore[list-item]


def test_event_stream_framing(server: Server):
    events = events_of(server, {"model": "smollm2", "input": QUESTION, **GREEDY})
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.incomplete"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][1]["response"]["status"] == "in_progress"
    assert names[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-5:-1] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    done = events[-2][1]["item"]
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert done["content"][0]["text"] == text and done["status"] == "completed"


def test_function_call_event_stream(server: Server, tool_model: str):
    body = {
        "model": tool_model,
        "input": WEATHER,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        **GREEDY,
        "max_output_tokens": 64,
    }
    events = events_of(server, body)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    added = next(d for n, d in events if n == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert done["item_id"] == added["item"]["id"]
    assert json.loads(done["arguments"])["unit"] in UNITS
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["function_call"]


# -- the event stream, fed by hand --------------------------------------------------------

FINISH = Finish(
    done_reason="stop",
    tool_calls=1,
    prompt_eval_count=5,
    prompt_eval_duration=1,
    eval_count=7,
    eval_duration=1,
    load_duration=0,
    total_duration=2,
)


def reply_of(*events: Event, fail: BaseException | None = None) -> ResponseStream:
    async def source() -> AsyncIterator[Event]:
        for event in events:
            yield event
        if fail is not None:
            raise fail

    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "tools": [TOOL]})
    return ResponseStream(body, Run(model="m", events=source()))


def drain(reply: ResponseStream) -> list[tuple[str, dict[str, Any]]]:
    async def read() -> bytes:
        return b"".join([chunk async for chunk in await event_stream(reply)])

    events = []
    for chunk in asyncio.run(read()).decode().split("\n\n")[:-1]:
        name, data = chunk.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_output_items_follow_the_reply_in_order():
    call = CallOut(id="call_1", index=0, name="get_weather", arguments={"city": "Paris"})
    reply = reply_of(
        Delta(thinking="Hm."),
        Delta(content="\n"),  # whitespace alone opens no item
        Delta(tool_calls=(call,)),
        FINISH,
    )
    events = drain(reply)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    output = events[-1][1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Hm."}]
    assert output[1]["call_id"] == "call_1" and json.loads(output[1]["arguments"]) == {
        "city": "Paris"
    }
    assert events[-1][1]["response"]["tools"][0]["name"] == "get_weather"


def test_failure_after_the_first_byte_is_an_error_event():
    events = drain(reply_of(Delta(content="Hi"), fail=RunnerDied("the runner exited")))
    name, data = events[-1]
    assert name == "error" and data["sequence_number"] == len(events) - 1
    assert data["message"] == "the runner exited" and data["code"] == "api_error"
    assert data["error"]["message"] == "the runner exited"
