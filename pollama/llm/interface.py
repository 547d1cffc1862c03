"""``LlamaServerLike``: the part of ``LlamaServer`` the scheduler and the request handlers
use, so decision tests can pass a fake at the scheduler's ``server_factory`` seam."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.memory.layout import LayoutPolicy
from pollama.memory.types import BackendMemory
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingResponse,
    RerankResponse,
)


class LlamaServerLike(Protocol):
    """The part of ``LlamaServer`` the scheduler and the request handlers use."""

    @property
    def pid(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    @property
    def memory(self) -> BackendMemory | None: ...

    @property
    def load_progress(self) -> float: ...

    async def load(
        self, system: SystemInfo, gpus: Sequence[DeviceInfo], policy: LayoutPolicy
    ) -> list[DeviceID]: ...

    async def wait_until_running(self) -> None: ...

    async def ping(self) -> None: ...

    def has_exited(self) -> bool: ...

    def memory_size(self) -> tuple[int, int]: ...

    def completion(
        self, request: CompletionRequest
    ) -> AsyncGenerator[CompletionChunk | CompletionDone, None]: ...

    async def embedding(
        self, inputs: Sequence[str], truncate: bool = True
    ) -> EmbeddingResponse: ...

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResponse: ...

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    async def detokenize(self, tokens: Sequence[int]) -> str: ...

    async def close(self) -> None: ...
