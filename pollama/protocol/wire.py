"""Wire types between ``pollama serve`` (``LlamaServer``) and a runner, as frozen dataclasses.

Everything crosses as JSON. ``to_json()`` gives a dict for ``json.dumps``;
``from_json()`` accepts the decoded dict and raises ``ProtocolError`` on a
malformed body, so neither side ever sees a KeyError from the other's input.

Endpoints (all on 127.0.0.1):

    GET  /health      → Health
    GET  /info        → {"devices": [DeviceInfo JSON]}
    POST /load        LoadRequest → LoadResponse
    POST /completion  CompletionRequest → NDJSON: CompletionChunk lines, then CompletionDone
                      (an error after the stream began is a final {"error": "..."} line)
    POST /embedding   EmbeddingRequest → EmbeddingResponse
    POST /rerank      RerankRequest → RerankResponse (a model with rank pooling only)
    POST /tokenize    {"content": str, "add_special": bool} → {"tokens": [int]}
    POST /detokenize  {"tokens": [int]} → {"content": str}
    GET  /stats       → RunnerStats (debug figures: decode steps and batch sizes)

Errors before a stream are HTTP 4xx/5xx with {"error": "..."}: 400 for a bad
request (e.g. a prompt longer than the context with truncate false), 503 when
the model is not loaded, 500 when llama.cpp fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from math import isfinite
from typing import Any

from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.memory.layout import Layout
from pollama.memory.types import BackendMemory
from pollama.options.parameters import default

# The memory and layout JSON live beside this module; their users import them from here.
from pollama.protocol.memory_json import layout_from_json as layout_from_json
from pollama.protocol.memory_json import layout_to_json as layout_to_json
from pollama.protocol.memory_json import memory_from_json as memory_from_json
from pollama.protocol.memory_json import memory_to_json as memory_to_json

IMAGE_MARKER = "<__media__>"
"""Where each of a completion's ``images`` goes in its prompt, one marker per image in
order (the runner gives llama.cpp's projector this marker)."""


class ProtocolError(ValueError):
    """A body that does not follow the runner protocol."""


class HealthStatus(StrEnum):
    LAUNCHED = "launched"
    LOADING = "loading-model"
    READY = "ready"
    NO_SLOTS = "no-slots-available"
    ERROR = "error"


class LoadOperation(StrEnum):
    """In order of increasing commitment (the seed's fit → alloc → commit), and close."""

    FIT = "fit"  # report memory needs; allocate nothing
    ALLOC = "alloc"  # allocate buffers (as far as llama.cpp allows without reading weights)
    COMMIT = "commit"  # load the weights; the model is ready afterwards
    CLOSE = "close"  # free everything


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    progress: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status.value, "progress": self.progress}
        if self.error:
            body["error"] = self.error
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Health:
        try:
            return cls(
                HealthStatus(body["status"]),
                float(body.get("progress", 0.0)),
                str(body.get("error", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad health body: {exc}") from None


@dataclass(frozen=True)
class LoadRequest:
    operation: LoadOperation
    layout: Layout = Layout()
    num_ctx: int = 4096
    """Context per sequence; the runner allocates ``num_ctx × parallel`` KV cells."""
    parallel: int = 1
    batch_size: int = 512
    kv_cache_type: str = "f16"
    flash_attention: str = "auto"
    """auto | enabled | disabled."""
    num_threads: int = 0
    use_mmap: bool = True
    main_gpu: int = 0
    lora: tuple[str, ...] = ()
    projector: str = ""
    draft: str = ""
    """A draft model's GGUF: it drafts for speculative decoding when ``draft_max`` > 0."""
    extra_buffers: ExtraBuffers = PLAIN
    """llama.cpp's extra CPU buffer types: on or off, and what the estimate needs of them."""
    draft_max: int = 0  # draft tokens a sequence may verify per step; 0 = no speculation

    def to_json(self) -> dict[str, Any]:
        skip = ("layout", "extra_buffers")
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        body["operation"] = self.operation.value
        body["lora"] = list(self.lora)
        body["gpu_layers"] = layout_to_json(self.layout)
        body["extra_buffers"] = self.extra_buffers.to_json()
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LoadRequest:
        try:
            return cls(
                operation=LoadOperation(body["operation"]),
                layout=layout_from_json(body.get("gpu_layers", [])),
                num_ctx=_positive(body.get("num_ctx", 4096), "num_ctx"),
                parallel=_positive(body.get("parallel", 1), "parallel"),
                batch_size=_positive(body.get("batch_size", 512), "batch_size"),
                kv_cache_type=str(body.get("kv_cache_type", "f16")),
                flash_attention=str(body.get("flash_attention", "auto")),
                num_threads=int(body.get("num_threads", 0)),
                use_mmap=bool(body.get("use_mmap", True)),
                main_gpu=int(body.get("main_gpu", 0)),
                lora=tuple(str(p) for p in body.get("lora", ())),
                projector=str(body.get("projector", "") or ""),
                draft=str(body.get("draft", "") or ""),
                extra_buffers=ExtraBuffers.from_json(body.get("extra_buffers")),
                draft_max=max(0, int(body.get("draft_max", 0))),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad load request: {exc}") from None


@dataclass(frozen=True)
class LoadResponse:
    success: bool
    memory: BackendMemory | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "memory": memory_to_json(self.memory) if self.memory else None,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LoadResponse:
        try:
            memory = body.get("memory")
            return cls(
                success=bool(body["success"]),
                memory=memory_from_json(memory) if memory else None,
                error=str(body.get("error", "") or ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad load response: {exc}") from None


@dataclass(frozen=True)
class SamplingOptions:
    """Ollama's sampling options (``OptionKind.SAMPLING`` in the options table), with its
    defaults."""

    num_predict: int = default("num_predict")
    temperature: float = default("temperature")
    top_k: int = default("top_k")
    top_p: float = default("top_p")
    min_p: float = default("min_p")
    typical_p: float = default("typical_p")
    repeat_penalty: float = default("repeat_penalty")
    repeat_last_n: int = default("repeat_last_n")
    presence_penalty: float = default("presence_penalty")
    frequency_penalty: float = default("frequency_penalty")
    seed: int = default("seed")
    stop: tuple[str, ...] = default("stop")
    num_keep: int = default("num_keep")
    draft_num_predict: int = default("draft_num_predict")
    """The most tokens speculative decoding drafts per step for this request; 0: none."""

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["stop"] = list(self.stop)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SamplingOptions:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in body or body[f.name] is None:
                continue
            raw = body[f.name]
            if f.name == "stop":
                if isinstance(raw, str) or not isinstance(raw, Sequence):
                    raise ProtocolError('option "stop" must be of type array')
                values["stop"] = tuple(str(s) for s in raw if s)
            elif f.type == "int":
                values[f.name] = _number(raw, f.name, int)
            else:
                values[f.name] = _number(raw, f.name, float)
        return cls(**values)


@dataclass(frozen=True)
class LoraScale:
    """A request's scale for one of the model's LoRA adapters (``id``: ADAPTER order)."""

    id: int
    scale: float

    @classmethod
    def from_json(cls, body: Any) -> LoraScale:
        if not isinstance(body, Mapping):
            raise ProtocolError("each lora entry must be an object with id and scale")
        adapter_id, scale = body.get("id"), body.get("scale")
        if isinstance(adapter_id, bool) or not isinstance(adapter_id, int) or adapter_id < 0:
            raise ProtocolError("lora id must be a non-negative integer")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not isfinite(scale):
            raise ProtocolError("lora scale must be a finite number")
        return cls(adapter_id, float(scale))


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str = ""
    tokens: tuple[int, ...] | None = None
    """Pre-tokenized prompt; used instead of ``prompt`` when given."""
    images: tuple[str, ...] = ()
    grammar: str = ""
    think_end: str = ""
    """When set, the reply starts inside a thinking block that this text closes: the
    grammar applies only after it (the model thinks freely, then answers constrained)."""
    think_budget: int = -1
    """With ``think_end``: after this many thinking tokens the runner closes the block
    itself. -1: no limit."""
    options: SamplingOptions = field(default_factory=SamplingOptions)
    logprobs: bool = False
    top_logprobs: int = 0
    shift: bool = True
    truncate: bool = True
    lora: tuple[LoraScale, ...] = ()
    """Per-request adapter scales; empty: every adapter at its load scale."""

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens) if self.tokens is not None else None,
            "images": list(self.images),
            "grammar": self.grammar,
            "think_end": self.think_end,
            "think_budget": self.think_budget,
            "options": self.options.to_json(),
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "shift": self.shift,
            "truncate": self.truncate,
            "lora": [{"id": e.id, "scale": e.scale} for e in self.lora],
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CompletionRequest:
        try:
            tokens = body.get("tokens")
            top = int(body.get("top_logprobs", 0) or 0)
            if not 0 <= top <= 20:
                raise ProtocolError("top_logprobs must be between 0 and 20")
            return cls(
                prompt=str(body.get("prompt", "") or ""),
                tokens=tuple(int(t) for t in tokens) if tokens is not None else None,
                images=tuple(str(i) for i in body.get("images", ()) or ()),
                grammar=str(body.get("grammar", "") or ""),
                think_end=str(body.get("think_end", "") or ""),
                think_budget=int(body.get("think_budget", -1)),
                options=SamplingOptions.from_json(body.get("options", {}) or {}),
                logprobs=bool(body.get("logprobs", False)),
                top_logprobs=top,
                shift=bool(body.get("shift", True)),
                truncate=bool(body.get("truncate", True)),
                lora=tuple(LoraScale.from_json(e) for e in body.get("lora", ()) or ()),
            )
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"bad completion request: {exc}") from None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.bytes)}


@dataclass(frozen=True)
class Logprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple[TokenLogprob, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = {"token": self.token, "logprob": self.logprob, "bytes": list(self.bytes)}
        if self.top_logprobs:
            body["top_logprobs"] = [t.to_json() for t in self.top_logprobs]
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Logprob:
        return cls(
            token=str(body["token"]),
            logprob=float(body["logprob"]),
            bytes=tuple(int(b) for b in body.get("bytes", ())),
            top_logprobs=tuple(
                TokenLogprob(str(t["token"]), float(t["logprob"]), tuple(t.get("bytes", ())))
                for t in body.get("top_logprobs", ())
            ),
        )


@dataclass(frozen=True)
class CompletionChunk:
    """A piece of generated text (never a partial stop string or partial UTF-8)."""

    content: str
    logprobs: tuple[Logprob, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"content": self.content}
        if self.logprobs:
            body["logprobs"] = [lp.to_json() for lp in self.logprobs]
        return body


@dataclass(frozen=True)
class CompletionDone:
    done_reason: str
    """stop | length."""
    prompt_eval_count: int
    prompt_eval_duration: int
    """Nanoseconds."""
    eval_count: int
    eval_duration: int
    """Nanoseconds."""
    content: str = ""
    prompt_cached: int = 0
    """Prompt tokens not evaluated because the slot's cache held them (Ollama's
    prompt_eval_count leaves them out; OpenAI's usage counts them as cached)."""
    draft_count: int = 0  # draft tokens verified for it (speculative decoding)
    draft_accepted: int = 0  # of those, the ones its sampling agreed with

    def to_json(self) -> dict[str, Any]:
        return {"done": True, **asdict(self)}


class RunnerReported(Exception):
    """The runner's own ``{"error": ...}`` line in a stream: it failed this request."""


def parse_completion_line(body: Mapping[str, Any]) -> CompletionChunk | CompletionDone:
    """One NDJSON line of a /completion stream; raises ProtocolError for a line that is
    not one, RunnerReported (carrying the runner's message) for an error line."""
    if "error" in body:
        raise RunnerReported(str(body["error"]))
    try:
        if body.get("done"):
            return CompletionDone(
                done_reason=str(body["done_reason"]),
                prompt_eval_count=int(body["prompt_eval_count"]),
                prompt_eval_duration=int(body["prompt_eval_duration"]),
                eval_count=int(body["eval_count"]),
                eval_duration=int(body["eval_duration"]),
                content=str(body.get("content", "")),
                prompt_cached=int(body.get("prompt_cached", 0)),
                draft_count=int(body.get("draft_count", 0)),
                draft_accepted=int(body.get("draft_accepted", 0)),
            )
        return CompletionChunk(
            content=str(body["content"]),
            logprobs=tuple(Logprob.from_json(lp) for lp in body.get("logprobs", ())),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"bad completion line: {exc}") from None


@dataclass(frozen=True)
class EmbeddingRequest:
    content: tuple[str, ...]
    truncate: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"content": list(self.content), "truncate": self.truncate}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EmbeddingRequest:
        content = body.get("content")
        if isinstance(content, str):
            content = [content]
        if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
            raise ProtocolError("content must be a string or a list of strings")
        return cls(tuple(content), bool(body.get("truncate", True)))


@dataclass(frozen=True)
class EmbeddingResponse:
    embeddings: tuple[tuple[float, ...], ...]
    """One vector per input, as the model's pooling gives it (not normalized)."""
    prompt_eval_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "embeddings": [list(e) for e in self.embeddings],
            "embedding": list(self.embeddings[0]) if len(self.embeddings) == 1 else None,
            "prompt_eval_count": self.prompt_eval_count,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EmbeddingResponse:
        try:
            return cls(
                tuple(tuple(float(x) for x in e) for e in body["embeddings"]),
                int(body["prompt_eval_count"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad embedding response: {exc}") from None


@dataclass(frozen=True)
class RerankRequest:
    """One query against documents: the runner formats each pair as the model expects."""

    query: str
    documents: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "documents": list(self.documents)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RerankRequest:
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str):
            raise ProtocolError("query must be a string")
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise ProtocolError("documents must be a list of strings")
        return cls(query, tuple(documents))


@dataclass(frozen=True)
class RerankResponse:
    scores: tuple[float, ...]
    """One relevance score per document, in the request's order (higher: more relevant)."""
    prompt_eval_count: int

    def to_json(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "prompt_eval_count": self.prompt_eval_count}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RerankResponse:
        try:
            return cls(tuple(float(x) for x in body["scores"]), int(body["prompt_eval_count"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad rerank response: {exc}") from None


@dataclass(frozen=True)
class RunnerStats:
    """Debug figures: how the batch loop has been packing work."""

    decode_steps: int
    tokens_decoded: int
    max_sequences_per_step: int
    """The most sequences any one llama_decode call served."""
    sequences_per_step: dict[int, int]
    """Histogram: number of sequences in a step → steps."""
    images_encoded: int = 0
    """Images the projector has encoded (an image the cache still held is not encoded)."""
    lora_switches: int = 0
    """Times a step changed the LoRA scales on the context (requests with different
    ``lora`` scales never share a step)."""

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["sequences_per_step"] = {str(k): v for k, v in self.sequences_per_step.items()}
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunnerStats:
        return cls(
            int(body["decode_steps"]),
            int(body["tokens_decoded"]),
            int(body["max_sequences_per_step"]),
            {int(k): int(v) for k, v in body["sequences_per_step"].items()},
            int(body.get("images_encoded", 0)),
            int(body.get("lora_switches", 0)),
        )


def _positive(value: Any, name: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1")
    return number


def _number(raw: Any, name: str, kind: type[int] | type[float]) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        type_name = "integer" if kind is int else "number"
        raise ProtocolError(f'option "{name}" must be of type {type_name}')
    return kind(raw)
