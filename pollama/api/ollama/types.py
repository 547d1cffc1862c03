"""Ollama's native wire types (``/api/*``), mirroring Ollama's ``api`` package.

Unknown fields are ignored, as Ollama ignores them; fields Ollama renamed
over time (``name`` → ``model``) are accepted under both names. Metric fields
are omitted from responses when unset (``exclude_none`` at encoding time).
Durations are integer nanoseconds; times are RFC 3339 with nanoseconds, UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from pollama.api.lora import LoraEntry
from pollama.api.wiremodel import WireModel


def rfc3339(moment: datetime | None = None) -> str:
    """``2026-11-25T10:20:30.123456789Z``-style timestamps, as Ollama sends them."""
    if moment is None:
        return _now()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _now() -> str:
    # Every streamed token carries one: whole seconds are formatted once, not per token.
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return f"{_second(seconds)}.{nanos:09d}Z"


@lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class _Request(WireModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Response(WireModel):
    model_config = ConfigDict(extra="ignore")


def _legacy_name(data: Any) -> Any:
    """Ollama's older clients send ``name`` where newer ones send ``model``."""
    if isinstance(data, dict) and not data.get("model") and data.get("name"):
        return {**data, "model": data["name"]}
    return data


class ToolCallFunction(WireModel):
    model_config = ConfigDict(extra="ignore")
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(WireModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    function: ToolCallFunction


class Message(WireModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _null_content(cls, value: Any) -> Any:
        return "" if value is None else value


class TokenLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(TokenLogprob):
    top_logprobs: list[TokenLogprob] | None = None


class _Generation(_Request):
    """Fields generate and chat share."""

    model: str = ""
    format: Any = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: bool | str | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    lora: list[LoraEntry] | None = None
    """Per-request LoRA adapter scales, as llama-server takes them (``api.lora``)."""

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int) -> int:
        if not 0 <= value <= 20:
            raise ValueError("top_logprobs must be between 0 and 20")
        return value

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_null(cls, value: Any) -> Any:
        return True if value is None else value


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None

    _legacy = model_validator(mode="before")(_legacy_name)


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    _legacy = model_validator(mode="before")(_legacy_name)


class Metrics(_Response):
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    draft_count: int | None = None
    """Ours: draft tokens verified by speculative decoding (absent when none)."""
    draft_accepted_count: int | None = None


class GenerateResponse(Metrics):
    model: str
    created_at: str = Field(default_factory=rfc3339)
    response: str = ""
    thinking: str | None = None
    done: bool = False
    done_reason: str | None = None
    context: list[int] | None = None
    tool_calls: list[ToolCall] | None = None
    logprobs: list[Logprob] | None = None


class ChatResponse(Metrics):
    model: str
    created_at: str = Field(default_factory=rfc3339)
    message: Message = Field(default_factory=lambda: Message(role="assistant"))
    done: bool = False
    done_reason: str | None = None
    logprobs: list[Logprob] | None = None


class EmbedRequest(_Request):
    model: str = ""
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    _legacy = model_validator(mode="before")(_legacy_name)

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbedResponse(_Response):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsRequest(_Request):
    """The legacy ``/api/embeddings``: one prompt, an unnormalized vector."""

    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    _legacy = model_validator(mode="before")(_legacy_name)


class EmbeddingsResponse(_Response):
    embedding: list[float]


class ModelDetails(_Response):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListModel(_Response):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(_Response):
    models: list[ListModel]


class RunningModel(_Response):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class LoadingModel(_Response):
    name: str
    progress: float
    """0–1: how far the runner has read the model's tensors."""


class ProcessResponse(_Response):
    models: list[RunningModel]
    loading: list[LoadingModel] = Field(default_factory=list)
    """pollama's addition: loads in progress (for `pollama run`'s progress display);
    Ollama's clients ignore it."""


class ShowRequest(_Request):
    model: str = ""
    verbose: bool = False
    system: str | None = None
    template: str | None = None
    options: dict[str, Any] | None = None

    _legacy = model_validator(mode="before")(_legacy_name)


class ShowResponse(_Response):
    license: str | None = None
    modelfile: str = ""
    parameters: str | None = None
    template: str | None = None
    system: str | None = None
    details: ModelDetails = Field(default_factory=ModelDetails)
    messages: list[Message] | None = None
    model_info: dict[str, Any] | None = None
    tensors: list[dict[str, Any]] | None = None
    capabilities: list[str] | None = None
    modified_at: str | None = None


class CreateRequest(_Request):
    model: str = ""
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    draft: str | dict[str, str] | None = None
    """The draft model (Modelfile ``DRAFT``): a stored model's name, or one uploaded GGUF
    as ``{file name: digest}`` (as ``adapters``)."""
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    quantization: str | None = None  # the older name of ``quantize``
    stream: bool = True

    _legacy = model_validator(mode="before")(_legacy_name)


class CopyRequest(_Request):
    source: str
    destination: str


class DeleteRequest(_Request):
    model: str = ""

    _legacy = model_validator(mode="before")(_legacy_name)


class PullRequest(_Request):
    model: str = ""
    insecure: bool = False
    stream: bool = True

    _legacy = model_validator(mode="before")(_legacy_name)


class PushRequest(PullRequest):
    """Ollama's PushRequest has the same fields as its PullRequest."""


class ProgressResponse(_Response):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class VersionResponse(_Response):
    version: str
