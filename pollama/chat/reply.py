"""A model's streamed reply, split into thinking, content and tool calls.

Text arrives in arbitrary pieces; a tag may be cut anywhere, even one character at a
time. The parser emits text as soon as it cannot be the start of a tag it waits for,
holding back only such a prefix (and whitespace it may drop), so the events, merged,
are the same however the reply was cut. The shape it reads:

    reply    := ws* [thinking] body
    thinking := OPEN ws* text ws* CLOSE ws*     only at the very start, or opened by the prompt
    body     := (content | call ws*)*           tagged or open-only syntax
              | json                            bare JSON: the whole body, parsed at the end

A call that does not parse is handed back as the content it was, with a warning, so
nothing the model wrote is lost.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThinkingTags:
    open: str = "<think>"
    close: str = "</think>"


@dataclass(frozen=True)
class ToolSyntax:
    """How a model marks a call: ``open`` None for a bare JSON reply, ``close`` None
    when the call runs to the end of the reply."""

    open: str | None
    close: str | None


TAGGED = ToolSyntax("<tool_call>", "</tool_call>")
BARE_JSON = ToolSyntax(None, None)

_THINKING_TAGS = (ThinkingTags("<think>", "</think>"), ThinkingTags("<thinking>", "</thinking>"))
# Llama 3.1's <|python_tag|> marks only its built-in tools; its custom-tool calls are
# bare JSON, which the fallback below reads.
_OPEN_ONLY_TAGS = ("[TOOL_CALLS]",)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class Thinking:
    text: str


@dataclass(frozen=True)
class ToolCalls:
    calls: tuple[ParsedCall, ...]


Event = Content | Thinking | ToolCalls


def infer_thinking(source: str) -> ThinkingTags | None:
    """The thinking tags a chat template writes (both of a pair), if any."""
    for tags in _THINKING_TAGS:
        if tags.open in source and tags.close in source:
            return tags
    return None


def infer_tool_syntax(source: str, reads_tools: bool) -> ToolSyntax | None:
    """How a model with this chat template calls tools; None when it is given none."""
    if "<tool_call>" in source:
        return TAGGED
    for tag in _OPEN_ONLY_TAGS:
        if tag in source:
            return ToolSyntax(tag, None)
    return BARE_JSON if reads_tools else None


def starts_in_thinking(prompt: str, tags: ThinkingTags) -> bool:
    """True when the prompt opened the thinking block for the model (DeepSeek-R1, Qwen3)."""
    return prompt.rstrip().endswith(tags.open)


def parse_calls(body: str, tool_names: Collection[str] | None = None) -> tuple[ParsedCall, ...]:
    """The calls in a block: one call object or a list of them. ValueError says what is
    wrong; deeply nested JSON raises RecursionError."""
    # strict=False: models write raw newlines inside strings.
    value = json.loads(body, strict=False)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("empty list")
    return tuple(_parse_call(item, tool_names) for item in items)


def _parse_call(item: object, tool_names: Collection[str] | None) -> ParsedCall:
    if not isinstance(item, dict):
        raise ValueError("call is not an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("call has no name")
    if tool_names is not None and name not in tool_names:
        raise ValueError(f"unknown tool {name!r}")
    # Llama 3 writes "parameters"; some models encode the arguments as a JSON string,
    # as OpenAI's wire format does.
    arguments = item["arguments"] if "arguments" in item else item.get("parameters")
    if isinstance(arguments, str):
        arguments = json.loads(arguments, strict=False)
    if not isinstance(arguments, dict):
        raise ValueError("arguments are not an object")
    return ParsedCall(name, arguments)


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class _Mode(enum.Enum):
    START = enum.auto()  # nothing but whitespace yet: thinking, a call or content?
    THINK_LEAD = enum.auto()  # just inside thinking: whitespace is dropped
    THINK = enum.auto()
    AFTER = enum.auto()  # after thinking or a call: whitespace is dropped
    CONTENT = enum.auto()
    CALL = enum.auto()  # inside a call block
    BARE = enum.auto()  # a bare JSON reply, parsed at the end


class ReplyParser:
    """Splits one reply; ``feed`` each piece as it comes, then ``finish`` once.

    ``in_thinking`` (see ``starts_in_thinking``) only counts when ``thinking`` is given.
    A call naming a tool outside ``tool_names`` (when given) is content."""

    def __init__(
        self,
        *,
        thinking: ThinkingTags | None = None,
        tools: ToolSyntax | None = None,
        in_thinking: bool = False,
        tool_names: Collection[str] | None = None,
    ) -> None:
        if thinking is not None and not (thinking.open and thinking.close):
            raise ValueError("thinking tags must not be empty")
        if tools is not None and (
            tools.open == "" or tools.close == "" or (tools.open is None and tools.close)
        ):
            raise ValueError(f"unusable tool syntax {tools!r}")
        self._thinking = thinking
        self._open = tools.open if tools else None
        self._close = tools.close if tools else None
        self._bare = tools is not None and tools.open is None
        self._tool_names = None if tool_names is None else frozenset(tool_names)
        self._held = ""  # received, not yet emitted
        self._scan = 0  # where to resume looking for a call's close tag
        if thinking is not None and in_thinking:
            self._mode = _Mode.THINK_LEAD
        elif thinking is not None or tools is not None:
            self._mode = _Mode.START
        else:
            self._mode = _Mode.CONTENT

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        self._held += text
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Event]:
        """Flushes what is held: a partial tag is text, an unclosed call is parsed."""
        out: list[Event] = []
        held, mode = self._held, self._mode
        self._held, self._mode = "", _Mode.CONTENT
        if mode is _Mode.START or mode is _Mode.CONTENT:
            _emit(out, Content, held)
        elif mode is _Mode.AFTER:
            _emit(out, Content, held.lstrip())
        elif mode is _Mode.THINK:
            _emit(out, Thinking, held.rstrip())
        elif mode is _Mode.CALL:
            self._settle(out, held, (self._open or "") + held)
        elif mode is _Mode.BARE:
            # A JSON answer that names nothing is just an answer; only a broken call warns.
            self._settle(out, held, held, quiet='"name"' not in held)
        return out

    def _step(self, out: list[Event]) -> bool:
        """Advances through the held text; False when it must wait for more."""
        held = self._held
        if self._mode is _Mode.START or self._mode is _Mode.AFTER:
            return self._begin(out)
        if self._mode is _Mode.THINK_LEAD:
            self._held = held.lstrip()
            if not self._held:
                return False
            self._mode = _Mode.THINK
            return True
        if self._mode is _Mode.THINK:
            assert self._thinking is not None
            close = self._thinking.close
            i = held.find(close)
            if i >= 0:
                _emit(out, Thinking, held[:i].rstrip())
                self._held, self._mode = held[i + len(close) :], _Mode.AFTER
                return True
            # Whitespace is held too: it is dropped if the close tag follows.
            text = held[: len(held) - _partial(held, close)].rstrip()
            _emit(out, Thinking, text)
            self._held = held[len(text) :]
            return False
        if self._mode is _Mode.CONTENT:
            if self._open is None:
                _emit(out, Content, held)
                self._held = ""
                return False
            i = held.find(self._open)
            if i >= 0:
                _emit(out, Content, held[:i])
                self._held, self._mode, self._scan = held[i + len(self._open) :], _Mode.CALL, 0
                return True
            keep = _partial(held, self._open)
            _emit(out, Content, held[: len(held) - keep])
            self._held = held[len(held) - keep :]
            return False
        if self._mode is _Mode.CALL and self._close is not None:
            i = held.find(self._close, self._scan)
            if i < 0:
                self._scan = max(0, len(held) - len(self._close) + 1)
                return False
            raw = f"{self._open}{held[: i + len(self._close)]}"
            self._held = held[i + len(self._close) :]
            self._mode = _Mode.AFTER if self._settle(out, held[:i], raw) else _Mode.CONTENT
            return True
        return False  # an open-only call or bare JSON runs to the end of the reply

    def _begin(self, out: list[Event]) -> bool:
        """Decides what follows the whitespace at the start, after thinking, or after a call."""
        text = self._held.lstrip()
        if not text:
            return False
        at_start = self._mode is _Mode.START
        tags: list[tuple[str, _Mode]] = []
        if at_start and self._thinking is not None:
            tags.append((self._thinking.open, _Mode.THINK_LEAD))
        if self._open is not None:
            tags.append((self._open, _Mode.CALL))
        for tag, mode in tags:
            if text.startswith(tag):
                self._held, self._mode, self._scan = text[len(tag) :], mode, 0
                return True
        if any(tag.startswith(text) for tag, _ in tags):
            return False
        if self._bare and text[0] in "{[":
            self._mode = _Mode.BARE
            if not at_start:
                self._held = text
            return True
        # Leading whitespace of the reply is the model's; after thinking or a call it is not.
        if at_start:
            _emit(out, Content, self._held[: len(self._held) - len(text)])
        self._held, self._mode = text, _Mode.CONTENT
        return True

    def _settle(self, out: list[Event], body: str, raw: str, *, quiet: bool = False) -> bool:
        """Emits the calls in ``body``, or ``raw`` as content when they do not parse."""
        try:
            calls = parse_calls(body, self._tool_names)
        except (ValueError, RecursionError) as exc:
            if not quiet:
                log.warning("tool call not parsed, returned as content: reason=%s", exc)
            _emit(out, Content, raw)
            return False
        out.append(ToolCalls(calls))
        return True


def _emit(out: list[Event], kind: type[Content] | type[Thinking], text: str) -> None:
    if text:
        out.append(kind(text))
