"""Validation, statuses, error shapes and framing: the fast tier (``inprocess``), no model.

Everything refusable is refused before a runner is involved, so these run on the real
app, store and scheduler over a scripted runner; a bug of ours is a 500 with a generic
message in each API's shape and its traceback in the log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess import InProcess
from toolmodel import WEATHER_TOOL

from pollama.protocol.wire import CompletionRequest

MODEL = "smollm2"
COLOURS = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    app = InProcess(tmp_path)
    with app:
        yield app


def test_errors_have_ollama_statuses(app: InProcess):
    missing = app.post("/api/generate", {"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    bad_json = app.client.post("/api/chat", content=b"{nope")
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    empty = app.client.post("/api/generate", content=b"")
    assert empty.status_code == 400 and empty.json() == {"error": "missing request body"}
    bad_format = app.post("/api/generate", {"model": "smollm2", "prompt": "x", "format": "yaml"})
    assert bad_format.status_code == 400 and "format" in bad_format.json()["error"]
    bad_keep = app.post("/api/generate", {"model": "smollm2", "keep_alive": "300"})
    assert bad_keep.status_code == 400
    raw_with_system = app.post(
        "/api/generate", {"model": "smollm2", "prompt": "x", "raw": True, "system": "s"}
    )
    assert raw_with_system.status_code == 400
    bad_option = app.post(
        "/api/generate", {"model": "smollm2", "prompt": "x", "options": {"stop": "a"}}
    )
    assert bad_option.status_code == 400  # the client's mistake (Ollama says 500)
    assert bad_option.json()["error"] == 'option "stop" must be of type array'


def test_ndjson_framing_is_one_object_per_line(app: InProcess):
    body = {"model": "smollm2", "prompt": "Hi", "options": GREEDY}
    with app.client.stream("POST", "/api/generate", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        raw = b"".join(response.iter_bytes())
    assert raw.endswith(b"}\n") and b"\n\n" not in raw
    records = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    assert [r["done"] for r in records] == [False] * (len(records) - 1) + [True]


def test_thinking_and_tools_on_a_model_that_cannot_are_refused(app: InProcess):
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
    thinking = app.post("/api/chat", {**chat, "think": True})
    assert thinking.status_code == 400
    assert thinking.json() == {"error": '"smollm2:latest" does not support thinking'}
    tools = app.post("/api/chat", {**chat, "tools": [WEATHER_TOOL]})
    assert tools.status_code == 400
    assert tools.json() == {"error": '"smollm2:latest" does not support tools'}
    level = app.post("/api/generate", {"model": "smollm2", "prompt": "Hi", "think": "max"})
    assert level.status_code == 400 and "think" in level.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": COLOURS, "n": 2}, "n must be 1"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "x"}]}, "role"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "n": 3}, "n must be 1"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, "input"),
        ("/v1/embeddings", {"model": MODEL, "input": "a", "encoding_format": "hex"}, "encoding"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": COLOURS, "tool_choice": "required"},
            "tools",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": COLOURS, "reasoning_effort": "extreme"},
            "reasoning_effort",
        ),
    ],
)
def test_bad_requests_are_400_in_openai_shape(
    app: InProcess, path: str, body: dict[str, Any], words: str
):
    response = app.post(path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_malformed_json_is_400_in_openai_shape(app: InProcess):
    response = app.client.post("/v1/chat/completions", content=b'{"model": "smollm2",')
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def broken(request: CompletionRequest) -> list[str]:
    raise RuntimeError("a bug in the engine glue")


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False}, "ollama"),
        ("/v1/chat/completions", {"model": MODEL, "messages": COLOURS}, "openai"),
        ("/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": COLOURS}, "anthropic"),
    ],
)
def test_a_bug_of_ours_is_a_generic_500_in_the_apis_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], shape: str
) -> None:
    with InProcess(tmp_path, script=broken) as client, caplog.at_level(logging.ERROR):
        response = client.post(path, json=body)
    assert response.status_code == 500
    message = {
        "ollama": lambda b: b["error"],
        "openai": lambda b: b["error"]["message"],
        "anthropic": lambda b: b["error"]["message"],
    }[shape](response.json())
    assert message == "internal error"  # nothing of ours leaks
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "a bug in the engine glue" in str(record.exc_info[1])


# -- limits -------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_it_is_read(tmp_path: Path) -> None:
    with InProcess(tmp_path, max_body=4096) as client:
        big = {"model": MODEL, "prompt": "x" * 8000, "stream": False}
        declared = client.post("/api/generate", json=big)
        assert declared.status_code == 413
        assert declared.json() == {"error": "request body too large (the limit is 4.0 KiB)"}
        openai = client.post("/v1/chat/completions", json={"model": MODEL, "x": "y" * 8000})
        assert openai.status_code == 413 and openai.json()["error"]["type"] != ""

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"model": "smollm2", "prompt": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        chunked = client.post("/api/generate", content=chunks())
        assert chunked.status_code == 413
        small = client.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False})
        assert small.status_code == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": 1 << 40}, 'option "num_ctx" must be between 1 and 16777216'),
        ({"num_ctx": 0}, 'option "num_ctx" must be between 1 and 16777216'),
        ({"num_predict": 10**12}, 'option "num_predict" must be between -2 and 16777216'),
        ({"num_thread": 100000}, 'option "num_thread" must be between 0 and 4096'),
    ],
)
def test_out_of_range_options_are_400(app: InProcess, options: dict[str, Any], message: str):
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": options}
    response = app.post("/api/generate", body)
    assert response.status_code == 400 and response.json() == {"error": message}


def test_a_non_finite_number_is_400(app: InProcess) -> None:
    raw = b'{"model": "smollm2", "prompt": "Hi", "options": {"temperature": NaN}}'
    response = app.client.post("/api/generate", content=raw)
    assert response.status_code == 400
    assert response.json() == {"error": 'option "temperature" must be of type float32'}


def test_too_many_messages_and_too_long_a_template_are_400(app: InProcess) -> None:
    many = [{"role": "user", "content": "hi"}] * 4097
    response = app.post("/api/chat", {"model": MODEL, "messages": many, "stream": False})
    assert response.status_code == 400 and "too many messages" in response.json()["error"]
    long = {"model": MODEL, "prompt": "Hi", "template": "x" * 300_000, "stream": False}
    response = app.post("/api/generate", long)
    assert response.status_code == 400 and "template too long" in response.json()["error"]
    create = app.post("/api/create", {"model": "t", "from": MODEL, "template": "x" * 300_000})
    assert create.status_code == 400 and "template too long" in create.json()["error"]
