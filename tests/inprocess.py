"""The fast tier: the real app, store and scheduler in this process, over a scripted runner.

``InProcess`` builds ``create_app(ServerState(...))`` with a ``Scheduler`` whose
``server_factory`` makes ``ScriptedRunner``s instead of runner processes, and a
Starlette ``TestClient`` over it. Everything above the runner is real (routes,
validation, the request path, templates, wire shapes, errors, the model store on
a temporary directory with the real demo GGUF); only generation is scripted, so a
test about a 400 or a wire shape costs milliseconds, not a model load. The
contracts that need the real model stay in the real-model tier (``serving.Server``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from pollama.api.app import create_app
from pollama.api.state import ServerState
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.memory.layout import LayoutPolicy
from pollama.memory.types import BackendMemory
from pollama.options.load import LoadConfig
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingResponse,
)
from pollama.scheduler.loaded import ModelSpec
from pollama.scheduler.scheduler import Scheduler
from pollama.settings import Settings
from pollama.store.disk import Store
from pollama.units import GiB

SYSTEM = SystemInfo(total_memory=16 * GiB, free_memory=8 * GiB, free_swap=0, thread_count=2)
Script = Callable[[CompletionRequest], Sequence[str]]
"""What the scripted runner answers a completion with: its pieces, in order."""


def echo(request: CompletionRequest) -> list[str]:
    """The default script: the last 24 characters of the prompt, in pieces of 4."""
    tail = request.prompt[-24:]
    pieces = [tail[i : i + 4] for i in range(0, len(tail), 4)]
    limit = request.options.num_predict
    return pieces if limit < 0 else pieces[:limit]


class ScriptedRunner:
    """A ``LlamaServerLike`` that loads instantly and answers from a script."""

    def __init__(self, spec: ModelSpec, config: LoadConfig, script: Script) -> None:
        self.spec = spec
        self.config = config
        self.script = script
        self.requests: list[CompletionRequest] = []
        self.closed = False

    pid = 4242
    memory: BackendMemory | None = None
    load_progress = 1.0

    @property
    def context_length(self) -> int:
        return self.config.num_ctx

    async def load(
        self, system: SystemInfo, gpus: Sequence[DeviceInfo], policy: LayoutPolicy
    ) -> list[DeviceID]:
        return []

    async def wait_until_running(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def has_exited(self) -> bool:
        return self.closed

    def memory_size(self) -> tuple[int, int]:
        return 0, 0

    async def completion(
        self, request: CompletionRequest
    ) -> AsyncGenerator[CompletionChunk | CompletionDone, None]:
        self.requests.append(request)
        pieces = list(self.script(request))
        for piece in pieces:
            yield CompletionChunk(piece)
        reason = "length" if len(pieces) == request.options.num_predict else "stop"
        yield CompletionDone(reason, len(request.prompt) // 4, 1000, len(pieces), 2000)

    async def embedding(self, inputs: Sequence[str], truncate: bool = True) -> EmbeddingResponse:
        vectors = tuple((float(len(text)), 1.0, 0.0) for text in inputs)
        return EmbeddingResponse(vectors, sum(len(text) for text in inputs))

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(text.encode())

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(tokens).decode("utf-8", "replace")

    async def close(self) -> None:
        self.closed = True


class InProcess:
    """The app over a scripted runner; use as a context manager (it runs the lifespan)."""

    def __init__(self, tmp: Path, script: Script = echo, **settings: Any) -> None:
        self.settings = Settings(models_dir=tmp / "models", **settings)
        self.script = script
        self.runners: list[ScriptedRunner] = []
        scheduler = Scheduler(
            self.settings,
            server_factory=self._start,
            system_probe=lambda: SYSTEM,
            gpu_probe=list,
        )
        self.state = ServerState(self.settings, Store(self.settings.models_dir), scheduler)
        self.client = TestClient(create_app(self.state), base_url="http://127.0.0.1:11434")

    async def _start(
        self, spec: ModelSpec, config: LoadConfig, gpus: Sequence[DeviceInfo]
    ) -> ScriptedRunner:
        runner = ScriptedRunner(spec, config, self.script)
        self.runners.append(runner)
        return runner

    def post(self, path: str, body: Any) -> httpx.Response:
        """A JSON POST, as ``serving.Server.post`` makes it (so tests read the same)."""
        return self.client.post(path, json=body)

    def __enter__(self) -> TestClient:
        return self.client.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
