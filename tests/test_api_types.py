"""Native wire types: what real clients send parses; what we send looks like Ollama's."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from pollama.api.ollama.types import (
    ChatRequest,
    ChatResponse,
    CreateRequest,
    DeleteRequest,
    EmbedRequest,
    GenerateRequest,
    GenerateResponse,
    Message,
    rfc3339,
)
from pollama.api.streaming import encode


def test_generate_defaults_and_unknown_fields():
    body = GenerateRequest.model_validate({"model": "smollm2", "prompt": "hi", "bogus": 1})
    assert body.stream is True and body.truncate is True and body.shift is True
    assert body.raw is False and body.format is None and body.keep_alive is None
    assert GenerateRequest.model_validate({"model": "m", "stream": None}).stream is True


def test_legacy_name_field():
    assert GenerateRequest.model_validate({"name": "old"}).model == "old"
    assert DeleteRequest.model_validate({"name": "old"}).model == "old"
    assert DeleteRequest.model_validate({"model": "new", "name": "old"}).model == "new"


def test_top_logprobs_range():
    with pytest.raises(ValidationError, match="between 0 and 20"):
        ChatRequest.model_validate({"model": "m", "top_logprobs": 21})


def test_chat_as_the_ollama_client_sends_it():
    # ollama-python 0.6 serializes its Message model with null fields included.
    body = ChatRequest.model_validate(
        {
            "model": "smollm2",
            "messages": [
                {"role": "user", "content": "hi", "images": None, "tool_calls": None},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "tools": None,
            "stream": False,
            "format": {"type": "object"},
            "options": {"temperature": 0},
            "keep_alive": "5m",
        }
    )
    assert [m.role for m in body.messages] == ["user", "assistant", "tool"]
    assert body.messages[1].content == ""
    assert body.messages[1].tool_calls[0].function.arguments == {"x": 1}
    assert body.stream is False and body.keep_alive == "5m"


def test_embed_input_forms_and_create_from_alias():
    assert EmbedRequest.model_validate({"model": "m", "input": "a"}).inputs == ["a"]
    assert EmbedRequest.model_validate({"model": "m", "input": ["a", "b"]}).inputs == ["a", "b"]
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate({"model": "m", "input": "a", "dimensions": 0})
    create = CreateRequest.model_validate({"model": "x", "from": "smollm2", "system": "be nice"})
    assert create.from_ == "smollm2"


def test_responses_omit_unset_metrics_and_use_rfc3339_nanoseconds():
    chunk = GenerateResponse(model="smollm2", response="Hi")
    out = json.loads(encode(chunk))
    assert set(out) == {"model", "created_at", "response", "done"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", out["created_at"])
    final = ChatResponse(
        model="m",
        message=Message(role="assistant", content="x"),
        done=True,
        done_reason="stop",
        total_duration=5,
        eval_count=1,
    )
    body = json.loads(encode(final))
    assert body["message"] == {"role": "assistant", "content": "x"}
    assert body["total_duration"] == 5 and "load_duration" not in body
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2026-01-02T03:04:05.000006000Z"
