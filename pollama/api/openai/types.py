"""OpenAI's wire types (``/v1/*``) as pollama speaks them.

Requests ignore fields we do not know, as OpenAI-compatible servers must (clients
send ``user``, ``service_tier``, ``parallel_tool_calls`` and more). Besides OpenAI's
own fields, requests accept pollama's extensions: ``options`` (Ollama options such as
``num_ctx``), ``keep_alive`` and ``think``.

Responses are encoded without unset optional fields, except the few OpenAI always
sends, as ``null`` when empty (``finish_reason`` of a stream chunk, ``content`` of a
message that only calls tools, ``logprobs``): each response type lists them in
``NULLS``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from pollama.api.lora import LoraEntry
from pollama.api.wiremodel import WireModel

# -- requests ------------------------------------------------------------------------------


class _Request(WireModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ImageURL(_Request):
    url: str
    detail: str | None = None


class ContentPart(_Request):
    """One part of a message's content: ``text`` or ``image_url``."""

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class FunctionCallIn(_Request):
    name: str
    arguments: str | dict[str, Any] = "{}"
    """A JSON string, as OpenAI sends it (an object is accepted too)."""


class ToolCallIn(_Request):
    id: str | None = None
    type: str = "function"
    function: FunctionCallIn


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    """An earlier reply's thinking (Ollama's name for it)."""
    reasoning_content: str | None = None
    """The same, as some clients name it."""


class StreamOptions(_Request):
    include_usage: bool = False


class JSONSchemaFormat(_Request):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ToolChoiceFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class SamplingRequest(_Request):
    """What chat and text completions share: sampling, streaming, pollama's extensions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    options: dict[str, Any] | None = None
    """Ollama options (``num_ctx`` …); the OpenAI fields above win over them."""
    keep_alive: float | str | None = None
    think: bool | str | None = None
    lora: list[LoraEntry] | None = None
    """Per-request LoRA adapter scales, as llama-server takes them (``api.lora``)."""


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    """How many most likely tokens to report per position (legacy completions)."""


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    truncate: bool = True


# -- responses -----------------------------------------------------------------------------


class _Response(WireModel):
    model_config = ConfigDict(extra="ignore")
    NULLS: ClassVar[tuple[str, ...]] = ()
    """Fields sent as ``null`` when unset, where OpenAI always sends them."""

    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.NULLS:
            data.setdefault(name, None)
        return data


class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int
    """The whole prompt, cached tokens included (as OpenAI counts them)."""
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCallOut(_Response):
    name: str
    arguments: str
    """A JSON string, as OpenAI sends it."""


class ToolCallOut(_Response):
    index: int | None = None
    """Set in stream chunks only."""
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob]


class ChatMessageOut(_Response):
    NULLS: ClassVar[tuple[str, ...]] = ("content",)
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning: str | None = None
    """The model's thinking, under Ollama's name for it."""
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(_Response):
    NULLS: ClassVar[tuple[str, ...]] = ("logprobs",)
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChunkChoice(_Response):
    NULLS: ClassVar[tuple[str, ...]] = ("logprobs", "finish_reason")
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    """Only on the last chunk, with ``stream_options.include_usage`` (and no choices)."""


class CompletionLogprobs(_Response):
    """The legacy completions' logprobs: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(_Response):
    NULLS: ClassVar[tuple[str, ...]] = ("logprobs", "finish_reason")
    text: str
    index: int = 0
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None
    reasoning: str | None = None
    """Thinking, for a model asked to think (``think``)."""


class Completion(_Response):
    """A text completion, and each chunk of a streamed one (OpenAI uses one shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32 with ``encoding_format: base64``."""


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    """Unix seconds of the model's last modification."""
    owned_by: str


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
