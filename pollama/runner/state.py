"""What the engine thread keeps between steps (and, from ``errors``, what it answers with).

A ``Slot`` is one sequence of the context: it outlives the requests that use it, so
that a later prompt can reuse what its KV cache holds. A ``Generation`` is one
request's progress through a slot, from admission to its last chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pollama.memory.types import BackendMemory
from pollama.options.load import LoadConfig
from pollama.protocol.wire import CompletionChunk, CompletionDone, CompletionRequest, Logprob

# The engine's errors, re-exported: its users import them from here.
from pollama.runner.errors import AllocationFailed as AllocationFailed
from pollama.runner.errors import EngineError as EngineError
from pollama.runner.lookup import Lookup
from pollama.runner.pace import Pace, RowCost
from pollama.runner.text import StreamedText
from pollama.runner.thinking import Thinking

if TYPE_CHECKING:  # only the types: this module itself stays free of llama.cpp
    from pollama.runner import llama
    from pollama.runner.draft_model import DraftModel
    from pollama.runner.lora import Adapters


Emit = Callable[[CompletionChunk | CompletionDone | EngineError], None]


@dataclass(eq=False)
class Request:
    """One completion inside the engine; ``emit`` must be safe to call from any thread."""

    body: CompletionRequest
    emit: Emit
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] | None = None
    """The prompt as the engine will evaluate it, once tokenized (images as placeholders)."""
    images: dict[int, Any] = field(default_factory=dict)
    """The prompt's images (``vision.ImageChunk``) by their first placeholder."""


@dataclass(eq=False)
class Generation:
    """One request in a slot: what it still has to evaluate, what it has produced."""

    request: Request
    sampler: llama.SlotSampler
    text: StreamedText
    pending: list[int]
    """Prompt tokens still to evaluate."""
    num_predict: int
    """Tokens it may generate at most (already capped by the context)."""
    prompt_tokens: int
    prompt_cached: int
    thinking: Thinking
    scales: tuple[float, ...] = ()
    """Its LoRA adapter scales (``lora.Scales``): only slots with equal ones share a step."""
    next_token: int | None = None
    """The last sampled token, fed in the next step."""
    generated: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    batch_index: int = -1
    """The row of this step's batch to sample from; -1 when the step samples none."""
    logprobs: list[Logprob] = field(default_factory=list)
    """Logprobs of tokens whose text is still held back: they ride with the next text."""
    lookup: Lookup | None = None
    """Its context's n-gram index, when it drafts (``speculate``)."""
    pace: Pace | None = None
    draft: list[int] = field(default_factory=list)
    """The draft tokens this step verifies after ``next_token``."""
    draft_source: Hashable = None
    """Where ``draft`` came from, for ``pace``: the n-gram size matched, or "model"."""
    proposed: list[int] = field(default_factory=list)
    """What the draft model drafted for this step, before the batch had its room."""


@dataclass(eq=False)
class Slot:
    """One sequence of the context (seq id = index) and what its KV cache holds."""

    index: int
    cache: list[int] = field(default_factory=list)
    """Tokens whose KV is in the cache for this sequence, in position order."""
    last_used: int = 0
    """The step that last used it: of equally good free slots, the stalest is taken."""
    gen: Generation | None = None
    """The request generating in it, if any."""
    cache_scales: tuple[float, ...] = ()
    """The LoRA scales its cache was computed under: a prompt with other scales reuses
    none of it."""
    draft_cache: list[int] = field(default_factory=list)
    """Tokens the draft model's context holds for this sequence (``draft_model``)."""

    @property
    def busy(self) -> bool:
        return self.gen is not None

    def release(self) -> None:
        """The request is done or gone: its sampler goes, the cache stays for the next."""
        if self.gen is not None:
            self.gen.sampler.free()
        self.gen = None


@dataclass(frozen=True, eq=False)
class Loaded:
    """A model allocated in llama.cpp: what the engine frees again on close."""

    model: Any
    ctx: Any
    vocab: llama.Vocab
    batch: llama.Batch
    config: LoadConfig
    memory: BackendMemory
    threadpool: llama.Threadpool | None
    adapters: Adapters
    """Its LoRA adapters (none for most models)."""
    shares_prefixes: bool
    """Whether a sequence may start from a copy of another's cache: not for recurrent
    state (it cannot be cut back to a prefix) nor sliding-window caches (which drop
    what a later prompt would need)."""
    vision: Any = None
    """The vision projector (``vision.Vision``), when the model was loaded with one (typed
    loosely: ``vision`` imports this module)."""
    drafter: DraftModel | None = None
    row_cost: RowCost = field(default_factory=RowCost)
    """What a draft row costs this model here, learnt from its steps (``pace``)."""
    """The draft model (Modelfile ``DRAFT``), when the load speculates with one."""
