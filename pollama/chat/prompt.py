"""Assemble the prompt text for /api/generate and /api/chat, with Ollama's rules.

Chat, as the API layer uses it::

    messages = assemble_chat(req.messages, system_default=mf.system, modelfile_messages=mf.messages)
    if truncate:
        messages = await truncate_chat(
            messages, lambda ms: count(render_chat(template, ms, ...)), num_ctx
        )
    prompt = render_chat(template, messages, tools=..., bos=..., eos=..., think=...)

(``chat_prompt`` is the first and last step together, for callers that do not
truncate.) Generate is one call: ``generate_prompt``.

Without a template Ollama renders its default ``{{ .Prompt }}``, which, run over a
conversation, gives the user and assistant contents concatenated in order and
drops system messages; we do the same with the same Go template.

Images travel beside the text in Prompt.images, in message order, untouched
(base64 strings); the text holds one ``IMAGE_MARKER`` where each goes (Ollama's
placement: before its message's text, or at its ``[img]`` placeholders). The
runner's projector turns each marker into the image's embeddings.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pollama.chat.images import place_images
from pollama.chat.template import ChatTemplate
from pollama.errors import InsertUnsupported
from pollama.protocol.wire import IMAGE_MARKER

Message = Mapping[str, Any]
Tool = Mapping[str, Any]


@dataclass(frozen=True)
class Prompt:
    text: str
    images: tuple[str, ...] = ()


@cache
def _default_template() -> ChatTemplate:
    return ChatTemplate.compile("{{ .Prompt }}", syntax="go")  # Ollama's DefaultTemplate


def _images(messages: Sequence[Message]) -> tuple[str, ...]:
    return tuple(image for m in messages for image in m.get("images") or ())


def _with_markers(messages: Sequence[Message]) -> Sequence[Message]:
    """Each message with images gets a marker per image in its content."""
    if not any(m.get("images") for m in messages):
        return messages
    return [
        {**m, "content": place_images(m.get("content") or "", len(m["images"]), IMAGE_MARKER)}
        if m.get("images")
        else m
        for m in messages
    ]


def assemble_chat(
    messages: Sequence[Message],
    *,
    system_default: str | None = None,
    modelfile_messages: Sequence[Message] = (),
) -> list[Message]:
    """Ollama's chat order: the Modelfile SYSTEM (unless the request starts with its own
    system message), then the Modelfile MESSAGEs, then the request's messages."""
    head: list[Message] = []
    if system_default and (not messages or messages[0].get("role") != "system"):
        head.append({"role": "system", "content": system_default})
    return [*head, *modelfile_messages, *messages]


def render_chat(
    template: ChatTemplate | None,
    messages: Sequence[Message],
    *,
    tools: Sequence[Tool] | None = None,
    bos: str = "",
    eos: str = "",
    think: bool | None = None,
) -> Prompt:
    """The prompt for exactly these messages, ending where the assistant's reply starts.

    A last message from the assistant is continued (Ollama's prefill) rather than
    closed: Go templates decide that themselves; Jinja ones are rendered with
    continue_final_message, or, when it is empty (no content, no tool calls), as if
    it were absent.
    """
    template = template or _default_template()
    extra: dict[str, Any] = {} if think is None else {"think": think}
    last = messages[-1] if messages else {}
    prefill = last.get("role") == "assistant" and bool(last.get("content"))
    if template.syntax == "jinja" and last.get("role") == "assistant" and not prefill:
        if not last.get("tool_calls"):
            messages = messages[:-1]  # an empty reply to continue: a fresh reply
    text = template.render(
        _with_markers(messages),
        tools=tools,
        continue_final_message=prefill,
        bos_token=bos,
        eos_token=eos,
        **extra,
    )
    return Prompt(text, _images(messages))


def chat_prompt(
    template: ChatTemplate | None,
    messages: Sequence[Message],
    *,
    tools: Sequence[Tool] | None = None,
    system_default: str | None = None,
    modelfile_messages: Sequence[Message] = (),
    bos: str = "",
    eos: str = "",
    think: bool | None = None,
) -> Prompt:
    """assemble_chat then render_chat: the whole chat prompt, untruncated."""
    full = assemble_chat(
        messages, system_default=system_default, modelfile_messages=modelfile_messages
    )
    return render_chat(template, full, tools=tools, bos=bos, eos=eos, think=think)


def generate_prompt(
    template: ChatTemplate | None,
    *,
    prompt: str,
    system: str | None = None,
    suffix: str = "",
    raw: bool = False,
    images: Sequence[str] = (),
    modelfile_system: str | None = None,
    modelfile_messages: Sequence[Message] = (),
    context: str = "",
    bos: str = "",
    eos: str = "",
    think: bool | None = None,
    model: str = "",
) -> Prompt:
    """The prompt for /api/generate, as Ollama's GenerateHandler builds it.

    ``raw`` returns ``prompt`` untouched (the API refuses raw with template, system or
    context before we get here). A ``suffix`` renders the template's fill-in-the-middle
    form, or raises InsertUnsupported naming ``model``. Otherwise the prompt is one
    user message after the request's ``system`` (or else the Modelfile SYSTEM) and the
    Modelfile MESSAGEs. ``context`` is the detokenized text of the deprecated
    ``context`` field: it goes first, and Modelfile MESSAGEs are then left out, as in
    Ollama.
    """
    pictures = tuple(images)
    if raw:
        return Prompt(place_images(prompt, len(pictures), IMAGE_MARKER), pictures)
    if suffix:
        if template is None or not template.supports_insert:
            raise InsertUnsupported(model)
        marked = place_images(prompt, len(pictures), IMAGE_MARKER)
        return Prompt(
            context + template.render_insert(marked, suffix, bos_token=bos, eos_token=eos), pictures
        )
    messages: list[Message] = []
    if system or modelfile_system:
        messages.append({"role": "system", "content": system or modelfile_system})
    if not context:
        messages.extend(modelfile_messages)
    user: dict[str, Any] = {"role": "user", "content": prompt}
    if pictures:
        user["images"] = list(pictures)
    messages.append(user)
    rendered = render_chat(template, messages, bos=bos, eos=eos, think=think)
    return Prompt(context + rendered.text, rendered.images)


# -- truncation ------------------------------------------------------------------------------


def _kept(messages: Sequence[Message], start: int) -> list[Message]:
    """Every system message before ``start``, then everything from ``start`` on."""
    return [m for m in messages[:start] if m.get("role") == "system"] + list(messages[start:])


def _search(count: int) -> Generator[int, bool, int]:
    """Binary search for the first message to keep: yields a candidate start, is sent
    whether the messages kept from there fit, returns the earliest start that fits.

    Dropping more never lengthens the prompt, so "fits" only turns from false to
    true as start grows, and 1 + ⌈log2(n - 1)⌉ renders suffice. The last message is
    always kept, fitting or not (the runner then truncates or refuses it).
    """
    if count <= 1 or (yield 0):
        return 0
    low, high = 1, count - 1  # high: always acceptable
    while low < high:
        middle = (low + high) // 2
        if (yield middle):
            high = middle
        else:
            low = middle + 1
    return high


def truncate_chat_sync(
    messages: Sequence[Message], count_tokens: Callable[[list[Message]], int], num_ctx: int
) -> list[Message]:
    """Drop the oldest non-system messages until ``count_tokens`` of the rest is at most
    ``num_ctx``; system messages and the last message always stay."""
    search = _search(len(messages))
    try:
        start = next(search)
        while True:
            start = search.send(count_tokens(_kept(messages, start)) <= num_ctx)
    except StopIteration as done:
        return _kept(messages, done.value)


async def truncate_chat(
    messages: Sequence[Message],
    count_tokens: Callable[[list[Message]], Awaitable[int] | int],
    num_ctx: int,
) -> list[Message]:
    """truncate_chat_sync for a counter that may be async (a tokenize call to the
    runner); a plain function works too. ``count_tokens`` gets the messages to keep
    and renders and tokenizes them itself, adding what images cost on its model."""
    search = _search(len(messages))
    try:
        start = next(search)
        while True:
            tokens = count_tokens(_kept(messages, start))
            if inspect.isawaitable(tokens):
                tokens = await tokens
            start = search.send(tokens <= num_ctx)
    except StopIteration as done:
        return _kept(messages, done.value)
