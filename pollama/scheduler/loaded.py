"""What the scheduler schedules: the model a request names, its record of one loaded
runner, and the lease a request holds on it.

The API layer builds a ``ModelSpec`` per request (from the model store) and
reads ``RunningModel`` rows for ``/api/ps``; the runner itself is driven through
``pollama.llm.interface.LlamaServerLike``, so decision tests can pass a fake.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from pollama.devices.types import DeviceInfo
from pollama.ggufmeta import GGUFModel
from pollama.llm.interface import LlamaServerLike
from pollama.llm.server import CrashObserver, LlamaServer
from pollama.llm.spare import SpareRunner
from pollama.options.load import LoadConfig, LoadOptions
from pollama.settings import Settings


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A model as a request names it. The API layer fills it from the model store:

    - ``name``: the canonical display name (``llama3.2:latest``); runners are
      kept per name, and ``unload`` / ``/api/ps`` use it;
    - ``model``: the GGUF header (``pollama.ggufmeta.read_model(blob path)``);
    - ``digest``: the manifest digest (hex) shown by ``/api/ps``; a name whose
      digest changed (re-pulled) is reloaded;
    - ``parameters``: the Modelfile PARAMETERs, already typed (lists for ``stop``);
    - ``adapters`` (LoRA blob paths) and ``projector`` (vision projector path);
    - ``draft``: the draft model's path (speculative decoding), "" for none;
    - ``details``: ``/api/ps``'s ``details`` object, passed through as is.
    """

    name: str
    model: GGUFModel
    digest: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    adapters: tuple[str, ...] = ()
    projector: str = ""
    draft: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.model.path

    def same_files(self, other: ModelSpec) -> bool:
        """Whether a runner loaded for ``other`` runs exactly these files."""
        return (
            self.path == other.path
            and self.digest == other.digest
            and self.adapters == other.adapters
            and self.projector == other.projector
            and self.draft == other.draft
        )

    def effective_ctx(self, num_ctx: int) -> int:
        """The context a runner would get for ``num_ctx``: clamped to the training context."""
        train = self.model.context_length
        return min(num_ctx, train) if train > 0 else num_ctx


ServerFactory = Callable[[ModelSpec, LoadConfig, Sequence[DeviceInfo]], Awaitable[LlamaServerLike]]
"""Starts a runner process (not yet loaded) for a model, seeing ``gpus``."""


@dataclass(frozen=True)
class RunningModel:
    """One row of ``/api/ps``."""

    name: str
    """What Ollama sends as both ``name`` and ``model``."""
    path: str
    """The model file's path."""
    digest: str
    size: int
    size_vram: int
    expires_at: datetime | None
    """UTC; None = never (keep_alive < 0). While busy: when it would expire if
    its requests ended now."""
    context_length: int
    processor: str
    """As ``ollama ps`` shows it: "100% GPU", "48%/52% CPU/GPU", "100% CPU"."""
    details: Mapping[str, Any]


@dataclass(eq=False)
class LoadedModel:
    """The scheduler's record of one loaded runner (mutated only by the scheduler)."""

    spec: ModelSpec
    server: LlamaServerLike
    asked: LoadOptions
    config: LoadConfig
    keep_alive: float
    in_flight: int = 0
    deadline: float | None = None
    """Clock time an idle runner expires (inf = never); None while busy."""
    last_used: float = 0.0
    draining: bool = False
    """A reload of this name waits for it to go idle: it takes no new requests."""
    failed: bool = False
    """It failed a ping: unload it whatever ``has_exited`` says."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def parallel(self) -> int:
        return max(1, self.config.parallel)

    def dead(self) -> bool:
        return self.failed or self.server.has_exited()

    def serves(self, spec: ModelSpec, asked: LoadOptions) -> bool:
        """Whether this runner can serve a request for ``spec`` with ``asked`` options:
        the same files and load-time options, and a context at least as large."""
        return spec.same_files(self.spec) and options_compatible(
            self.server.context_length, self.asked, spec.effective_ctx(asked.num_ctx), asked
        )

    def remaining(self, now: float) -> float:
        """Seconds of keep-alive left: the full keep-alive while busy."""
        if self.in_flight or self.deadline is None:
            return self.keep_alive
        return self.deadline - now

    def row(self, now: float, wall: datetime) -> RunningModel:
        """Its ``/api/ps`` row; ``now`` by the scheduler's clock, ``wall`` the same instant."""
        remaining = self.remaining(now)
        expires = _expiry(wall, remaining)
        total, vram = self.server.memory_size()
        memory = self.server.memory
        return RunningModel(
            name=self.name,
            path=str(self.spec.path),
            digest=self.spec.digest,
            size=total,
            size_vram=vram,
            expires_at=expires,
            context_length=self.server.context_length,
            processor=memory.processor() if memory is not None else "",
            details=self.spec.details,
        )


class Lease:
    """A slot of a loaded runner, held for one request. Release it when the request
    ends (``async with`` does): that is when keep-alive and expiry start."""

    def __init__(
        self,
        runner: LoadedModel,
        release: Callable[[LoadedModel], asyncio.Task[None] | None],
        options: dict[str, Any],
        load_duration: int,
    ) -> None:
        self._runner = runner
        self._release = release
        self._released = False
        self.options = options
        """Modelfile PARAMETERs ← request options: what the request's sampling uses."""
        self.load_duration = load_duration
        """Nanoseconds spent waiting for a load; 0 when a loaded runner was reused."""

    @property
    def server(self) -> LlamaServerLike:
        return self._runner.server

    @property
    def model(self) -> ModelSpec:
        return self._runner.spec

    async def release(self) -> None:
        """Give the slot back. Idempotent; an unload it triggers is awaited."""
        if self._released:
            return
        self._released = True
        closing = self._release(self._runner)
        if closing is not None:
            await asyncio.shield(closing)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


@dataclass(eq=False)
class PendingLoad:
    spec: ModelSpec
    asked: LoadOptions
    task: asyncio.Task[LoadedModel]

    def serves(self, spec: ModelSpec, asked: LoadOptions) -> bool:
        ctx = self.spec.effective_ctx(self.asked.num_ctx)
        return spec.same_files(self.spec) and options_compatible(
            ctx, self.asked, spec.effective_ctx(asked.num_ctx), asked
        )


def options_compatible(loaded_ctx: int, loaded: LoadOptions, ctx: int, asked: LoadOptions) -> bool:
    """A runner with ``loaded`` options (and ``loaded_ctx`` context) serves ``asked`` whose
    effective context is ``ctx``: a smaller context is served, anything else must match."""
    return (
        ctx <= loaded_ctx
        and asked.num_batch == loaded.num_batch
        and asked.num_gpu == loaded.num_gpu
        and asked.main_gpu == loaded.main_gpu
        and asked.use_mmap == loaded.use_mmap
        and asked.num_thread == loaded.num_thread
        and asked.parallel == loaded.parallel
        and asked.flash_attention == loaded.flash_attention
        and asked.kv_cache_type == loaded.kv_cache_type
    )


def eviction_order(runners: Sequence[LoadedModel], now: float) -> list[LoadedModel]:
    """Idle runners, the first to evict first: dead ones, then the shortest remaining
    keep-alive (expiring soonest), then the least recently used."""
    idle = [r for r in runners if r.in_flight == 0]
    return sorted(
        idle,
        key=lambda r: (not r.dead(), r.remaining(now), r.last_used),
    )


def llama_server_factory(
    settings: Settings,
    runner_command: Sequence[str] | None = None,
    on_crash: CrashObserver | None = None,
    spares: SpareRunner | None = None,
) -> ServerFactory:
    """The production ``ServerFactory``: ``LlamaServer.start`` for the spec's files;
    ``on_crash`` hears of runners the engine's code killed (the CPU path's verdicts)."""

    async def start(
        spec: ModelSpec, config: LoadConfig, gpus: Sequence[DeviceInfo]
    ) -> LlamaServerLike:
        return await LlamaServer.start(
            spec.model,
            config,
            settings,
            gpus,
            runner_command=runner_command,
            lora=spec.adapters,
            projector=spec.projector,
            draft=spec.draft,
            on_crash=on_crash,
            spares=spares,
        )

    return start


def is_forever(seconds: float) -> bool:
    return math.isinf(seconds)


def _expiry(wall: datetime, remaining: float) -> datetime | None:
    """When a keep-alive of ``remaining`` seconds from ``wall`` ends; None for forever, as
    for one so long (``keep_alive: 1e12``) that its end lies past what a datetime holds."""
    if is_forever(remaining):
        return None
    try:
        return wall + timedelta(seconds=max(0, remaining))
    except OverflowError:
        return None
