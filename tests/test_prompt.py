"""Prompt assembly for generate and chat (Ollama's rules) and chat truncation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollama.chat.prompt import (
    InsertUnsupported,
    Prompt,
    assemble_chat,
    chat_prompt,
    generate_prompt,
    render_chat,
    truncate_chat,
    truncate_chat_sync,
)
from pollama.chat.template import ChatTemplate, template_for
from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model
from pollama.protocol.wire import IMAGE_MARKER

Message = dict[str, Any]
Kept = list[Mapping[str, Any]]  # what truncation hands a token counter

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# ChatML without a default system prompt: the rendered length only shrinks as messages go.
CHATML = ChatTemplate.compile(
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def demo() -> ChatTemplate:
    template = template_for(read_model(demo_model_path()), None)
    assert template is not None
    return template


def msg(role: str, content: str, **more: Any) -> Message:
    return {"role": role, "content": content, **more}


def im(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


# -- chat --------------------------------------------------------------------------------------


def test_modelfile_system_and_messages_come_first() -> None:
    request = [msg("user", "hi")]
    shots = [msg("user", "2+2?"), msg("assistant", "4")]
    assembled = assemble_chat(request, system_default="S", modelfile_messages=shots)
    assert assembled == [msg("system", "S"), *shots, *request]


def test_a_request_system_message_replaces_the_modelfile_one() -> None:
    request = [msg("system", "mine"), msg("user", "hi")]
    shots = [msg("user", "q"), msg("assistant", "a")]
    assert assemble_chat(request, system_default="S", modelfile_messages=shots) == [
        *shots,
        *request,
    ]
    assert assemble_chat([], system_default="S") == [msg("system", "S")]
    assert assemble_chat(request) == request


def test_chat_prompt_with_the_demo_template(demo: ChatTemplate) -> None:
    prompt = chat_prompt(demo, [msg("user", "Hi")], system_default="Be terse.")
    assert prompt == Prompt(
        im("system", "Be terse.") + im("user", "Hi") + "<|im_start|>assistant\n"
    )
    plain = chat_prompt(demo, [msg("user", "Hi")])
    assert plain.text == im("system", SMOL_SYSTEM) + im("user", "Hi") + "<|im_start|>assistant\n"


def test_a_last_assistant_message_is_continued(demo: ChatTemplate) -> None:
    messages = [msg("system", "S"), msg("user", "Hi"), msg("assistant", "Once upon")]
    assert render_chat(demo, messages).text == im("system", "S") + im("user", "Hi") + (
        "<|im_start|>assistant\nOnce upon"
    )
    empty = [msg("system", "S"), msg("user", "Hi"), msg("assistant", "")]
    assert render_chat(demo, empty).text == render_chat(demo, empty[:-1]).text


def test_images_travel_beside_the_text_with_a_marker_where_each_goes(demo: ChatTemplate) -> None:
    messages = [
        msg("user", "a", images=["AAAA"]),
        msg("assistant", "b"),
        msg("user", "c [img] d", images=["BB", "CC"]),
    ]
    prompt = render_chat(demo, messages)
    assert prompt.images == ("AAAA", "BB", "CC")
    assert "AAAA" not in prompt.text
    # Ollama's placement: before the message's text, or at its [img] placeholders.
    assert im("user", f"{IMAGE_MARKER}a") in prompt.text
    assert im("user", f"{IMAGE_MARKER}c {IMAGE_MARKER} d") in prompt.text


def test_no_template_concatenates_user_and_assistant_contents() -> None:
    messages = [msg("system", "S"), msg("user", "U1"), msg("assistant", "A1"), msg("user", "U2")]
    assert render_chat(None, messages).text == "U1A1U2"  # Ollama's default {{ .Prompt }}


# -- generate ----------------------------------------------------------------------------------


def test_raw_passes_the_prompt_through(demo: ChatTemplate) -> None:
    prompt = generate_prompt(demo, prompt="<|im_start|>user\nx", raw=True)
    assert prompt == Prompt("<|im_start|>user\nx", ())
    with_image = generate_prompt(demo, prompt="<|im_start|>user\nx", raw=True, images=["IMG"])
    assert with_image == Prompt(f"{IMAGE_MARKER}<|im_start|>user\nx", ("IMG",))


def test_generate_uses_the_request_system_over_the_modelfile_one(demo: ChatTemplate) -> None:
    given = generate_prompt(demo, prompt="Hi", system="Mine", modelfile_system="Theirs")
    assert given.text == im("system", "Mine") + im("user", "Hi") + "<|im_start|>assistant\n"
    fallback = generate_prompt(demo, prompt="Hi", modelfile_system="Theirs")
    assert fallback.text.startswith(im("system", "Theirs"))
    default = generate_prompt(demo, prompt="Hi")
    assert default.text.startswith(im("system", SMOL_SYSTEM))


def test_generate_includes_modelfile_messages_unless_given_context() -> None:
    shots = [msg("user", "q"), msg("assistant", "a")]
    with_shots = generate_prompt(CHATML, prompt="Hi", modelfile_messages=shots, images=["I"])
    assert with_shots == Prompt(
        im("user", "q")
        + im("assistant", "a")
        + im("user", f"{IMAGE_MARKER}Hi")
        + "<|im_start|>assistant\n",
        ("I",),
    )
    resumed = generate_prompt(CHATML, prompt="Hi", modelfile_messages=shots, context="earlier ")
    assert resumed.text == "earlier " + im("user", "Hi") + "<|im_start|>assistant\n"


def test_generate_without_a_template_is_the_prompt() -> None:
    assert generate_prompt(None, prompt="just this", system="dropped").text == "just this"


def test_suffix_needs_a_template_with_insert(demo: ChatTemplate) -> None:
    with pytest.raises(InsertUnsupported, match="smollm2 does not support insert"):
        generate_prompt(demo, prompt="def f(", suffix="return 1", model="smollm2")
    with pytest.raises(InsertUnsupported):
        generate_prompt(None, prompt="def f(", suffix="return 1")
    fim = ChatTemplate.from_modelfile("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>")
    prompt = generate_prompt(fim, prompt="def f(", suffix="return 1", system="ignored")
    assert prompt.text == "<PRE> def f( <SUF>return 1 <MID>"


# -- truncation --------------------------------------------------------------------------------


class Counter:
    """Tokens as len(text) // 4 of the ChatML prompt; counts how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: Kept) -> int:
        self.calls += 1
        return len(render_chat(CHATML, messages).text) // 4


def fits(messages: Sequence[Mapping[str, Any]], num_ctx: int) -> bool:
    return len(render_chat(CHATML, messages).text) // 4 <= num_ctx


def test_truncation_drops_oldest_first_and_keeps_system_and_last() -> None:
    messages = [msg("system", "rules")] + [
        msg("user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 40) for i in range(10)
    ]
    kept = truncate_chat_sync(messages, Counter(), num_ctx=60)
    assert kept[0] is messages[0]
    assert kept[1:] == messages[-len(kept) + 1 :]
    assert fits(kept, 60) and not fits([messages[0], *messages[-len(kept) :]], 60)
    assert truncate_chat_sync(messages, Counter(), num_ctx=1) == [messages[0], messages[-1]]
    assert truncate_chat_sync(messages, Counter(), num_ctx=100_000) == messages


roles = st.sampled_from(["system", "user", "user", "assistant", "assistant", "tool"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(roles, st.integers(0, 120)), min_size=1, max_size=40),
    st.integers(0, 600),
)
def test_truncation_is_minimal_and_uses_few_renders(
    shape: list[tuple[str, int]], num_ctx: int
) -> None:
    messages = [msg(role, "w" * size, id=i) for i, (role, size) in enumerate(shape)]
    counter = Counter()
    kept = truncate_chat_sync(messages, counter, num_ctx)
    ids = [m["id"] for m in kept]

    # What is kept: every system message, the last message, and a run up to the end.
    assert ids == sorted(ids)
    assert {m["id"] for m in messages if m["role"] == "system"} <= set(ids)
    assert ids[-1] == len(messages) - 1
    dropped = [m for m in messages if m["id"] not in ids]
    run = [m["id"] for m in kept if m["role"] != "system"] + [len(messages) - 1]
    assert all(m["role"] != "system" and m["id"] < min(run) for m in dropped)

    # It fits whenever keeping only the system messages and the last one fits ...
    floor = [m for m in messages[:-1] if m["role"] == "system"] + [messages[-1]]
    if fits(floor, num_ctx):
        assert fits(kept, num_ctx)
    # ... and nothing more could have stayed: the newest dropped message does not fit back.
    if dropped:
        newest = dropped[-1]["id"]
        back = sorted([*kept, messages[newest]], key=lambda m: m["id"])
        assert not fits(back, num_ctx)

    assert counter.calls <= 1 + math.ceil(math.log2(max(len(messages) - 1, 1)))


def test_async_truncation_takes_sync_and_async_counters() -> None:
    messages = [msg("user" if i % 2 == 0 else "assistant", "y" * 50) for i in range(9)]
    expected = truncate_chat_sync(messages, Counter(), 50)
    assert 1 < len(expected) < len(messages)

    async def remote_count(batch: Kept) -> int:
        await asyncio.sleep(0)
        return Counter()(batch)

    assert asyncio.run(truncate_chat(messages, remote_count, 50)) == expected
    assert asyncio.run(truncate_chat(messages, Counter(), 50)) == expected
    assert asyncio.run(truncate_chat([], Counter(), 50)) == []
