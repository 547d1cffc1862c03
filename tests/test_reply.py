"""A streamed reply split into thinking, content and tool calls, however it was cut."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollama.chat.reply import (
    BARE_JSON,
    TAGGED,
    Content,
    Event,
    ParsedCall,
    ReplyParser,
    Thinking,
    ThinkingTags,
    ToolCalls,
    ToolSyntax,
    infer_thinking,
    infer_tool_syntax,
    starts_in_thinking,
)

THINK = ThinkingTags()
MISTRAL = ToolSyntax("[TOOL_CALLS]", None)
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
WEATHER_CALL = ParsedCall("get_weather", {"city": "Paris", "days": 2})
TIME = {"name": "get_time", "arguments": {"zone": "UTC"}}
TIME_CALL = ParsedCall("get_time", {"zone": "UTC"})


def tagged(call: Any) -> str:
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def run(parser: ReplyParser, pieces: Iterable[str]) -> list[Event]:
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.finish()


def merged(events: Iterable[Event]) -> list[Event]:
    """Consecutive events of one kind joined, as a client would show them."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, Content) and isinstance(last, Content):
            out[-1] = Content(last.text + event.text)
        elif isinstance(event, Thinking) and isinstance(last, Thinking):
            out[-1] = Thinking(last.text + event.text)
        elif isinstance(event, ToolCalls) and isinstance(last, ToolCalls):
            out[-1] = ToolCalls(last.calls + event.calls)
        else:
            out.append(event)
    return out


def chars(text: str) -> list[str]:
    return list(text)


def parse(text: str, **config: Any) -> list[Event]:
    """The merged events of ``text`` fed one character at a time (the hardest cut)."""
    return merged(run(ReplyParser(**config), chars(text)))


# -- thinking ---------------------------------------------------------------------------


def test_thinking_split_from_content_even_one_char_at_a_time() -> None:
    text = "\n<think>\nThe user greets me.\n</think>\n\nHello!"
    assert parse(text, thinking=THINK) == [Thinking("The user greets me."), Content("Hello!")]


def test_thinking_streams_before_its_close_tag_arrives() -> None:
    parser = ReplyParser(thinking=THINK)
    assert parser.feed("<think>step one, ") == [Thinking("step one,")]
    assert parser.feed("step two</th") == [Thinking(" step two")]
    assert parser.feed("ink>Answer") == [Content("Answer")]
    assert parser.finish() == []


def test_prompt_opened_thinking_starts_inside_it() -> None:
    text = "Let me think.\n</think>\n\nThe answer is 4."
    events = parse(text, thinking=THINK, in_thinking=True)
    assert events == [Thinking("Let me think."), Content("The answer is 4.")]


def test_unclosed_thinking_is_all_thinking() -> None:
    events = parse("<think>I am still pondering </thi", thinking=THINK)
    assert events == [Thinking("I am still pondering </thi")]
    assert parse("  hmm  ", thinking=THINK, in_thinking=True) == [Thinking("hmm")]


def test_think_tag_after_content_started_is_content() -> None:
    text = "Sure. <think>not a block</think> done"
    assert parse(text, thinking=THINK) == [Content(text)]


def test_in_thinking_without_tags_is_plain_content() -> None:
    assert parse("a</think>b", in_thinking=True) == [Content("a</think>b")]


def test_partial_open_tag_at_the_end_is_content() -> None:
    assert parse("  <thi", thinking=THINK) == [Content("  <thi")]


# -- tagged tool calls ------------------------------------------------------------------


def test_tagged_tool_call() -> None:
    assert parse(tagged(WEATHER), tools=TAGGED) == [ToolCalls((WEATHER_CALL,))]


def test_two_tagged_calls_give_two_events_and_no_whitespace_content() -> None:
    text = f"\n{tagged(WEATHER)}\n\n{tagged(TIME)}\n"
    events = run(ReplyParser(tools=TAGGED), chars(text))
    assert events == [ToolCalls((WEATHER_CALL,)), ToolCalls((TIME_CALL,))]


def test_arguments_as_json_string() -> None:
    call = {"name": "get_weather", "arguments": json.dumps(WEATHER["arguments"])}
    assert parse(tagged(call), tools=TAGGED) == [ToolCalls((WEATHER_CALL,))]


def test_parameters_is_a_synonym_of_arguments() -> None:
    call = {"name": "get_weather", "parameters": WEATHER["arguments"]}
    assert parse(tagged(call), tools=TAGGED) == [ToolCalls((WEATHER_CALL,))]


def test_list_of_calls_in_one_block() -> None:
    text = tagged([WEATHER, TIME])
    assert parse(text, tools=TAGGED) == [ToolCalls((WEATHER_CALL, TIME_CALL))]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": ',  # invalid JSON
        '{"arguments": {}}',  # no name
        '{"name": 3, "arguments": {}}',  # name not a string
        '{"name": "get_weather", "arguments": [1]}',  # arguments not an object
        '{"name": "get_weather", "arguments": "[1]"}',  # string not decoding to an object
        '{"name": "get_weather"}',  # no arguments
        "[]",
        "[" * 5000 + "]" * 5000,  # nested past the recursion limit
    ],
)
def test_malformed_call_is_raw_content_with_a_warning(
    body: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = f"<tool_call>{body}</tool_call>"
    with caplog.at_level(logging.WARNING, logger="pollama.chat.reply"):
        events = parse(f"Checking. {raw}\n", tools=TAGGED)
    assert events == [Content(f"Checking. {raw}\n")]
    assert "tool call not parsed" in caplog.text


def test_unknown_tool_name_is_content(caplog: pytest.LogCaptureFixture) -> None:
    text = tagged(WEATHER)
    with caplog.at_level(logging.WARNING, logger="pollama.chat.reply"):
        assert parse(text, tools=TAGGED, tool_names=["get_time"]) == [Content(text)]
    assert "unknown tool 'get_weather'" in caplog.text
    assert parse(text, tools=TAGGED, tool_names={"get_weather"}) == [ToolCalls((WEATHER_CALL,))]


def test_unclosed_block_at_finish_is_parsed() -> None:
    text = "<tool_call>" + json.dumps(WEATHER)
    assert parse(text, tools=TAGGED) == [ToolCalls((WEATHER_CALL,))]
    assert parse("<tool_call>{oops", tools=TAGGED) == [Content("<tool_call>{oops")]


def test_content_streams_before_a_tool_call() -> None:
    parser = ReplyParser(tools=TAGGED)
    assert parser.feed("Let me check.\n<tool") == [Content("Let me check.\n")]
    assert parser.feed("_call>" + json.dumps(WEATHER)) == []
    assert parser.feed("</tool_call>") == [ToolCalls((WEATHER_CALL,))]
    assert parser.finish() == []


def test_tool_call_inside_thinking_is_thinking() -> None:
    text = f"<think>maybe {tagged(WEATHER)}</think>{tagged(WEATHER)}"
    events = parse(text, thinking=THINK, tools=TAGGED)
    assert events == [Thinking(f"maybe {tagged(WEATHER)}"), ToolCalls((WEATHER_CALL,))]


# -- open-only and bare JSON ------------------------------------------------------------


def test_open_only_list_runs_to_the_end() -> None:
    text = "[TOOL_CALLS] " + json.dumps([WEATHER, TIME])
    assert parse(text, tools=MISTRAL) == [ToolCalls((WEATHER_CALL, TIME_CALL))]


def test_open_only_failure_is_raw_content(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pollama.chat.reply"):
        events = parse("Hi [TOOL_CALLS]get_weather[ARGS]{}", tools=MISTRAL)
    assert events == [Content("Hi [TOOL_CALLS]get_weather[ARGS]{}")]
    assert "reason=" in caplog.text


def test_bare_json_call_after_thinking() -> None:
    text = "<think>use the tool</think>\n" + json.dumps(WEATHER)
    events = parse(text, thinking=THINK, tools=BARE_JSON)
    assert events == [Thinking("use the tool"), ToolCalls((WEATHER_CALL,))]


def test_bare_json_non_call_is_content_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    text = ' {"answer": 42}'
    with caplog.at_level(logging.WARNING, logger="pollama.chat.reply"):
        assert parse(text, tools=BARE_JSON) == [Content(text)]
    assert caplog.records == []


def test_bare_json_broken_call_warns(caplog: pytest.LogCaptureFixture) -> None:
    text = '{"name": "get_weather", "arguments": 1}'
    with caplog.at_level(logging.WARNING, logger="pollama.chat.reply"):
        assert parse(text, tools=BARE_JSON) == [Content(text)]
    assert "arguments are not an object" in caplog.text


def test_bare_json_only_at_the_start() -> None:
    parser = ReplyParser(tools=BARE_JSON)
    text = "Here: " + json.dumps(WEATHER)
    assert parser.feed(text) == [Content(text)]  # streamed at once, nothing held
    assert parser.finish() == []


# -- inference from the template --------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '<think>\\n' }}{{ reasoning }}{{ '</think>' }}", ThinkingTags()),
        ("<thinking>{{ x }}</thinking>", ThinkingTags("<thinking>", "</thinking>")),
        ("{{ '<think>' }} only opens", None),
        ("<|im_start|>{{ content }}<|im_end|>", None),
    ],
)
def test_infer_thinking(source: str, expected: ThinkingTags | None) -> None:
    assert infer_thinking(source) == expected


@pytest.mark.parametrize(
    ("source", "reads_tools", "expected"),
    [
        ("{{- '<tool_call>\\n' }}{{ tool | tojson }}", True, TAGGED),
        ("{{ '[TOOL_CALLS]' }}", True, MISTRAL),
        ("{{- '<|python_tag|>' }}", True, BARE_JSON),
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}", True, BARE_JSON),
        ("{{ messages }}", False, None),
    ],
)
def test_infer_tool_syntax(source: str, reads_tools: bool, expected: ToolSyntax | None) -> None:
    assert infer_tool_syntax(source, reads_tools) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("<|Assistant|><think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # thinking switched off
        ("<|im_start|>assistant\n", False),
    ],
)
def test_starts_in_thinking(prompt: str, expected: bool) -> None:
    assert starts_in_thinking(prompt, THINK) is expected


def test_empty_tags_are_refused() -> None:
    with pytest.raises(ValueError):
        ReplyParser(thinking=ThinkingTags("", "</think>"))
    with pytest.raises(ValueError):
        ReplyParser(tools=ToolSyntax(None, "</x>"))


# -- properties -------------------------------------------------------------------------

# Pieces that exercise every path: tags whole and cut, whitespace, calls good and bad.
FRAGMENTS = [
    "<think>",
    "</think>",
    "<thinking>",
    "</thinking>",
    "<tool_call>",
    "</tool_call>",
    "[TOOL_CALLS]",
    "<",
    "</",
    "<th",
    "<tool",
    "</tool_ca",
    "[TOOL",
    " ",
    "\n",
    "\n\n",
    "hello",
    "42",
    "{",
    "}",
    "[",
    "]",
    json.dumps(WEATHER),
    json.dumps([WEATHER]),
    '{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}',
    '{"name": "x"',
    '"name"',
]
CONFIGS: list[dict[str, Any]] = [
    {},
    {"thinking": THINK},
    {"thinking": THINK, "in_thinking": True},
    {"tools": TAGGED},
    {"tools": TAGGED, "tool_names": ["get_time"]},
    {"tools": MISTRAL},
    {"tools": BARE_JSON},
    {"thinking": THINK, "tools": TAGGED},
    {"thinking": THINK, "tools": BARE_JSON},
    {"thinking": THINK, "tools": MISTRAL, "in_thinking": True},
    {"thinking": ThinkingTags("<thinking>", "</thinking>"), "tools": TAGGED},
]
replies = st.one_of(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join), st.text())


@st.composite
def cut(draw: st.DrawFn, text: str) -> list[str]:
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1)))
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


@given(data=st.data(), text=replies, config=st.sampled_from(CONFIGS))
def test_events_do_not_depend_on_how_the_reply_was_cut(
    data: st.DataObject, text: str, config: dict[str, Any]
) -> None:
    pieces = data.draw(cut(text))
    assert "".join(pieces) == text
    whole = run(ReplyParser(**config), [text])
    streamed = run(ReplyParser(**config), pieces)
    assert merged(streamed) == merged(whole)
    assert all(not isinstance(e, Content | Thinking) or e.text for e in streamed)


@given(text=replies, config=st.sampled_from(CONFIGS))
def test_text_events_only_carry_text_from_the_reply(text: str, config: dict[str, Any]) -> None:
    for event in run(ReplyParser(**config), chars(text)):
        if isinstance(event, Content | Thinking):
            assert event.text in text


@given(pieces=st.lists(st.text()))
def test_without_tags_the_reply_is_content_verbatim(pieces: list[str]) -> None:
    events = merged(run(ReplyParser(), pieces))
    assert events == ([Content("".join(pieces))] if "".join(pieces) else [])
