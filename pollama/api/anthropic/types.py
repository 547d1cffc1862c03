"""Anthropic's Messages API wire types (``/v1/messages``), the parts pollama serves.

Requests ignore fields they do not use (``metadata``, ``cache_control``,
``citations``, ``service_tier``…). Two extensions carry what Ollama's own API
would: ``options`` (Ollama's runtime options, e.g. ``num_ctx``) and
``keep_alive``. Responses are encoded with every field present (``null``
included), as Anthropic's clients expect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from pollama.api.wiremodel import WireModel


class _In(WireModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- request ------------------------------------------------------------------------------


class TextBlock(_In):
    type: Literal["text"]
    text: str


class ImageSource(_In):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_In):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_In):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_In):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


class ThinkingBlock(_In):
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_In):
    type: Literal["redacted_thinking"]
    data: str = ""


InputBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(_In):
    role: Literal["user", "assistant"]
    content: str | list[InputBlock]


class Tool(_In):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_In):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_In):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    """``enabled`` thinks within ``budget_tokens``; ``adaptive`` and ``between_tools``
    leave the length to the model."""
    budget_tokens: int | None = Field(default=None, ge=1)


class OutputFormat(_In):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_In):
    format: OutputFormat | None = None
    effort: str | None = None
    """Ignored: how hard Claude tries has no counterpart here."""


class MessagesRequest(_In):
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    """Extension: Ollama's runtime options; the fields above take precedence."""
    keep_alive: float | str | None = None
    """Extension: how long the model stays loaded after the request (Ollama's)."""


# -- response -----------------------------------------------------------------------------


class TextOut(WireModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(WireModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""
    """Anthropic signs its thinking; pollama has nothing to sign it with."""


class ToolUseOut(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentOut = TextOut | ThinkingOut | ToolUseOut

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(WireModel):
    input_tokens: int = 0
    """Prompt tokens evaluated; those the cache held are ``cache_read_input_tokens``."""
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None


class Message(WireModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentOut] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage = Field(default_factory=Usage)
