"""``LlamaServer``: one runner process serving one model — the interface the scheduler sees.

    server = await LlamaServer.start(model, config, settings, gpus)
    devices = await server.load(system, gpus, policy)   # fit → alloc → commit
    await server.wait_until_running()                   # weights read
    async for piece in server.completion(request): ...
    await server.close()

Errors follow one rule: ``RunnerDied`` (carrying the runner's last error line)
when the process is gone, ``RunnerError`` when it failed one request and may
still serve others (``RunnerHTTPError`` keeps the runner's HTTP status),
``LoadError`` and its subclasses when a model cannot be placed or loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TypeVar

import httpx

from pollama.devices.cpu import read_cpu
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.engine.build import find_build
from pollama.engine.crash import crash_signal, explain_crash
from pollama.errors import (
    EngineCrashed,
    LoadError,
    RunnerDied,
    RunnerError,
    RunnerHTTPError,
)
from pollama.ggufmeta import GGUFModel, read_model
from pollama.llm.load import LoadResult, load_model
from pollama.llm.process import RunnerProcess, free_port, runner_environment
from pollama.llm.runner_client import RunnerClient
from pollama.llm.spare import RUNNER_MODULE, SpareRunner
from pollama.llm.status import explain_error
from pollama.memory.layout import Layout, LayoutPolicy
from pollama.memory.placement import plan_placement
from pollama.memory.types import BackendMemory
from pollama.options.load import LoadConfig
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingResponse,
    Health,
    HealthStatus,
    LoadOperation,
    LoadRequest,
    LoadResponse,
    ProtocolError,
    RerankResponse,
    RunnerReported,
    parse_completion_line,
)
from pollama.settings import Settings

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 0.1
"""Seconds between load-progress polls (a display rate, not a synchronisation)."""

T = TypeVar("T")
ClientFactory = Callable[[int], RunnerClient]


class CrashObserver(Protocol):
    """Told once when the runner dies of a crash signal (``pollama.engine.cpu_path``'s
    ``record_crash``); answers whether the next load takes another CPU path."""

    def __call__(self, number: int, *, extra_on: bool, during_load: bool, pid: int) -> bool: ...


POLL_INTERVAL = 0.1
"""Seconds between /health polls while a runner starts or loads."""
LAUNCH_POLL_INTERVAL = 0.02
"""Seconds between /health polls until a new runner listens (a refused connect is cheap)."""
EXIT_GRACE = 3.0
"""After a broken connection, how long to wait for the process to be reaped
before concluding it is alive (a dying process closes its sockets first)."""
REPEAT_LIMIT = 30
"""A generation repeating one piece more than this many times in a row is ended."""


class LlamaServer:
    """A runner process and its model. Create with ``await LlamaServer.start(...)``."""

    def __init__(
        self,
        model: GGUFModel,
        config: LoadConfig,
        settings: Settings,
        process: RunnerProcess,
        client: RunnerClient,
        port: int,
        load_request: LoadRequest,
        on_crash: CrashObserver | None = None,
        adapters: Sequence[GGUFModel] = (),
    ) -> None:
        self._model = model
        self._adapters = tuple(adapters)
        """The LoRA adapters' headers: the estimate counts their tensors."""
        self._config = config
        self._settings = settings
        self._process = process
        self._client = client
        self._port = port
        self._load_request = load_request
        self._semaphore = asyncio.Semaphore(max(1, config.parallel))
        self._memory: BackendMemory | None = None
        self._layout = Layout()
        self._close_task: asyncio.Task[None] | None = None
        self._load_progress = 0.0
        self._on_crash = on_crash
        self._loaded = False
        self._crash: EngineCrashed | None = None
        self._last_line = 0.0
        """When the runner last sent a line of a completion (monotonic seconds)."""
        self._stalled = False

    @classmethod
    async def start(
        cls,
        model: GGUFModel,
        config: LoadConfig,
        settings: Settings,
        gpus: Sequence[DeviceInfo],
        *,
        runner_command: Sequence[str] | None = None,
        client_factory: ClientFactory | None = None,
        lora: Sequence[str] = (),
        projector: str = "",
        draft: str = "",
        stop_grace: float = 5.0,
        on_crash: CrashObserver | None = None,
        spares: SpareRunner | None = None,
    ) -> LlamaServer:
        """A runner for ``model`` seeing only ``gpus``: the spare if one fits, else a new one."""
        # A LoRA file that is not a GGUF is refused here (InvalidModelFile), before a runner.
        adapters = await asyncio.to_thread(lambda: tuple(read_model(p) for p in lora))
        env = runner_environment(gpus, os.environ)
        taken = None
        if spares is not None and runner_command is None:
            taken = await spares.take(model.path, env)
        if taken is not None:
            process, port = taken
        else:
            port = free_port()
            base = list(runner_command or [sys.executable, *RUNNER_MODULE])
            command = [*base, "--model", str(model.path), "--port", str(port)]
            try:
                process = await RunnerProcess.spawn(command, env, stop_grace=stop_grace)
            except OSError as exc:
                raise RunnerError(f"error starting runner: {exc}") from exc
        try:
            if client_factory is None:
                client = RunnerClient(port, load_timeout=settings.load_timeout)
            else:
                client = client_factory(port)
        except BaseException:
            await process.stop()
            raise
        request = LoadRequest(
            operation=LoadOperation.FIT,
            num_ctx=config.num_ctx,
            parallel=config.parallel,
            batch_size=config.batch_size,
            kv_cache_type=config.kv_cache_type,
            flash_attention=config.flash_attention.value,
            num_threads=config.num_threads,
            use_mmap=config.use_mmap,
            main_gpu=config.main_gpu,
            lora=tuple(lora),
            projector=projector,
            draft=draft,
            extra_buffers=config.extra_buffers,
            draft_max=config.draft_max,
        )
        return cls(
            model, config, settings, process, client, port, request, on_crash, adapters=adapters
        )

    # -- facts the scheduler and /api/ps read -------------------------------------------

    @property
    def model_path(self) -> Path:
        return self._model.path

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def context_length(self) -> int:
        """num_ctx per sequence."""
        return self._config.num_ctx

    @property
    def memory(self) -> BackendMemory | None:
        """The runner's figures after a load, the estimate during one, None before."""
        return self._memory

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def load_progress(self) -> float:
        """0–1: how far llama.cpp has read the model's tensors (1 once loaded)."""
        return self._load_progress

    def memory_size(self) -> tuple[int, int]:
        """(total, vram) in bytes; (0, 0) before ``load``."""
        return self._memory.memory_size() if self._memory else (0, 0)

    def vram_by_gpu(self, device: DeviceID) -> int:
        return self._memory.vram_by_gpu(device) if self._memory else 0

    def has_exited(self) -> bool:
        return self._process.has_exited()

    # -- loading ------------------------------------------------------------------------

    async def load(
        self, system: SystemInfo, gpus: Sequence[DeviceInfo], policy: LayoutPolicy
    ) -> list[DeviceID]:
        """Place the model (estimate, then the runner's figures) and load it; the GPUs used.

        Raises LoadRequiredFull / InsufficientMemory from the layout, LoadError when
        no layout can be allocated, RunnerDied if the runner exits meanwhile.
        """
        path = self._load_request.projector
        projector = read_model(path) if path else None  # a small header, read once per load
        draft_path = self._load_request.draft
        draft = read_model(draft_path) if draft_path else None
        placement = plan_placement(
            self._model,
            self._config,
            system,
            gpus,
            policy,
            projector,
            adapters=self._adapters,
            draft=draft,
        )
        self._memory, self._layout = placement.memory, placement.layout
        log.info(
            "loading model %s: layers=%d requested=%d estimate=%s",
            self._model.path.name,
            placement.memory.n_layers,
            policy.num_gpu,
            placement.layout,
        )
        result = await self._load_placed(placement.layout, placement.memory, system, gpus, policy)
        self._memory, self._layout = result.memory, result.layout
        self._load_progress = 1.0
        self._loaded = True
        return result.devices()

    async def _load_placed(
        self,
        layout: Layout,
        memory: BackendMemory,
        system: SystemInfo,
        gpus: Sequence[DeviceInfo],
        policy: LayoutPolicy,
    ) -> LoadResult:
        await self.wait_launched()
        # The runner answers /load only once the tensors are read; its /health says how
        # far it is meanwhile, for `pollama run`'s progress display.
        watcher = asyncio.create_task(self._watch_progress())
        try:
            return await load_model(
                _CheckedLoads(self),
                system,
                gpus,
                request=self._load_request,
                layout=layout,
                memory=memory,
                policy=policy,
            )
        finally:
            watcher.cancel()

    async def _watch_progress(self) -> None:
        while True:
            try:
                health = await self._client.health()
            except (httpx.TransportError, ProtocolError, RunnerHTTPError):
                health = None
            if health is not None and health.status is HealthStatus.LOADING:
                self._load_progress = max(self._load_progress, min(health.progress, 1.0))
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def wait_launched(self) -> None:
        """Until the runner answers /health at all (it binds its port after starting)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while await self._poll_health() is None:
            if loop.time() - started > self._settings.load_timeout:
                raise LoadError("timed out waiting for the runner to start")
            await self._process.wait_exited(LAUNCH_POLL_INTERVAL)

    async def wait_until_running(self) -> None:
        """Poll /health until the model is ready. Fails after ``load_timeout`` seconds
        without progress, and at once with RunnerDied if the runner exits."""
        loop = asyncio.get_running_loop()
        started = stalled_since = loop.time()
        progress = -1.0
        while True:
            health = await self._poll_health()
            if health is not None:
                if health.status in (HealthStatus.READY, HealthStatus.NO_SLOTS):
                    log.info("runner started in %.2f seconds", loop.time() - started)
                    return
                if health.status is HealthStatus.ERROR:
                    raise LoadError(f"error loading model: {health.error or 'runner error'}")
                if health.progress > progress:
                    progress, stalled_since = health.progress, loop.time()
            if loop.time() - stalled_since > self._settings.load_timeout:
                raise LoadError(
                    "timed out waiting for llama runner to start - "
                    f"progress {max(progress, 0.0):.2f} after {self._settings.load_timeout:g}s"
                )
            await self._process.wait_exited(POLL_INTERVAL)

    async def _poll_health(self) -> Health | None:
        """The runner's health; None while it does not answer; RunnerDied once it is gone."""
        if self._process.has_exited():
            raise self._died()
        try:
            return await self._client.health()
        except (httpx.TransportError, ProtocolError, RunnerHTTPError) as exc:
            if self._process.has_exited():
                raise self._died() from exc
            return None

    async def _send_load(self, request: LoadRequest) -> LoadResponse:
        return await self._request(lambda: self._client.load(request))

    async def ping(self) -> None:
        health = await self._request(self._client.health)
        if health.status is HealthStatus.ERROR:
            raise RunnerError(health.error or "runner reported an error")

    # -- requests -----------------------------------------------------------------------

    def completion(
        self, request: CompletionRequest
    ) -> AsyncGenerator[CompletionChunk | CompletionDone, None]:
        """Stream a completion (a structured-output grammar comes in the request)."""
        limit = self._settings.max_tokens or 10 * self.context_length
        if not 0 <= request.options.num_predict <= limit:
            request = replace(request, options=replace(request.options, num_predict=limit))
        return self._stream(request)

    async def _stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[CompletionChunk | CompletionDone, None]:
        async with self._semaphore:
            await self._ready()
            repeats, last, pieces = 0, "", 0
            first_piece = 0
            self._last_line = time.monotonic()
            watchdog = asyncio.create_task(self._watch_stall())
            try:
                async with self._client.completion(request) as lines:
                    async for line in lines:
                        self._last_line = time.monotonic()
                        if not line.strip():
                            continue
                        item = _parse_line(line)
                        if isinstance(item, CompletionDone):
                            yield item
                            return
                        if item.content:
                            repeats = repeats + 1 if item.content == last else 0
                            last = item.content
                            if repeats > REPEAT_LIMIT:
                                # Leaving the stream context closes the connection,
                                # which stops the runner's generation.
                                log.warning("prediction aborted: piece repeated %d times", repeats)
                                elapsed = time.monotonic_ns() - first_piece if first_piece else 0
                                yield CompletionDone("stop", 0, 0, pieces, elapsed)
                                return
                        pieces += 1
                        first_piece = first_piece or time.monotonic_ns()
                        yield item
            except httpx.TransportError as exc:
                raise await self._connection_lost(exc) from exc
            finally:
                watchdog.cancel()
            raise await self._connection_lost(None)

    async def _watch_stall(self) -> None:
        """While a completion streams: a runner that has sent nothing for the stall timeout
        must still answer /health (it does while it evaluates a long prompt). One that
        does not is stopped or wedged: it is killed, so the request fails now and the
        scheduler loads a new runner, instead of the slot hanging forever."""
        timeout = self._settings.stall_timeout
        if timeout <= 0:
            return
        while True:
            await asyncio.sleep(max(0.1, self._last_line + timeout - time.monotonic()))
            if time.monotonic() - self._last_line < timeout:
                continue
            try:
                await asyncio.wait_for(self._client.health(), timeout)
            except (httpx.HTTPError, TimeoutError, ProtocolError, RunnerHTTPError):
                log.error("runner pid=%d stalled: nothing for %.0fs; killing it", self.pid, timeout)
                self._stalled = True
                self._process.kill()
                return
            self._last_line = time.monotonic()  # alive and busy: look again later

    async def embedding(self, inputs: Sequence[str], truncate: bool = True) -> EmbeddingResponse:
        async with self._semaphore:
            await self._ready()
            return await self._request(lambda: self._client.embedding(inputs, truncate))

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankResponse:
        async with self._semaphore:
            await self._ready()
            return await self._request(lambda: self._client.rerank(query, documents))

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        await self._ready()
        return await self._request(lambda: self._client.tokenize(text, add_special))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        await self._ready()
        return await self._request(lambda: self._client.detokenize(tokens))

    async def _ready(self) -> None:
        """The runner is loaded and healthy, so a request may be sent.

        "No free slot" counts as ready: our semaphore admits at most ``parallel``
        requests, so a busy slot is one a finished or abandoned request has not yet
        handed back, and the engine queues the new request until it does. (Failing
        instead turned a client's early disconnect into a 500 for the next request.)
        """
        health = await self._request(self._client.health)
        if health.status in (HealthStatus.READY, HealthStatus.NO_SLOTS):
            return
        if health.status is HealthStatus.ERROR:
            raise RunnerError(health.error or "runner reported an error")
        raise RunnerError(f"model is not ready (runner status: {health.status.value})")

    async def _request(self, call: Callable[[], Awaitable[T]]) -> T:
        """One request to the runner, with a broken connection turned into RunnerDied
        (the process is gone) or RunnerError (it is not)."""
        if self._process.has_exited():
            raise self._died()
        try:
            return await call()
        except httpx.TransportError as exc:
            raise await self._connection_lost(exc) from exc
        except ProtocolError as exc:
            raise RunnerError(f"bad response from runner: {exc}") from exc

    async def _connection_lost(self, exc: Exception | None) -> RunnerError:
        if await self._process.wait_exited(EXIT_GRACE):
            return self._died()
        if exc is None:
            return RunnerError("runner ended the response early")
        return RunnerError(f"lost connection to the runner: {exc!r}")

    def _died(self) -> RunnerDied:
        if self._stalled:
            timeout = self._settings.stall_timeout
            return RunnerDied(
                f"the runner stopped answering for {timeout:g}s (stalled, or stopped by a "
                "signal); it was killed and the next request loads the model again"
            )
        number = crash_signal(self._process.returncode)
        if number is None or self._process.stopping:
            return RunnerDied(f"llama runner process has terminated: {self._process.exit_reason}")
        if self._crash is None:
            self._crash = self._explain_crash(number)
        return self._crash

    def _explain_crash(self, number: int) -> EngineCrashed:
        """The engine's code killed the runner: say so in words, and tell the observer
        once (it remembers what this proves about the CPU path)."""
        extra_on = self._config.extra_buffers.on
        during_load = not self._loaded
        retry = False
        if self._on_crash is not None:
            retry = self._on_crash(number, extra_on=extra_on, during_load=during_load, pid=self.pid)
        stage = "while loading the model" if during_load else "while generating"
        if extra_on:
            stage += " with llama.cpp's extra CPU buffer types on"
        message = explain_crash(
            number,
            stage,
            cmake_args=read_cpu().portable_cmake_args(),
            version=find_build().version,
            next_load="pollama loads without those buffer types from now on" if retry else "",
        )
        return EngineCrashed(
            message, signal=number, extra_buffers=extra_on, during_load=during_load
        )

    # -- shutdown -----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the runner (SIGTERM, then SIGKILL) and wait for it. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        log.debug("stopping runner pid=%d", self.pid)
        try:
            await self._process.stop()
        finally:
            await self._client.aclose()


class _CheckedLoads:
    """The load loop's client: /load through LlamaServer's error mapping."""

    def __init__(self, server: LlamaServer) -> None:
        self._server = server

    async def load(self, request: LoadRequest) -> LoadResponse:
        try:
            return await self._server._send_load(request)
        except RunnerHTTPError as exc:
            # The runner refused the model ("unknown model architecture"): say what to do.
            raise RunnerHTTPError(explain_error(str(exc)), exc.status) from exc


def _parse_line(line: str) -> CompletionChunk | CompletionDone:
    try:
        body = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RunnerError(f"bad response from runner: {exc}") from None
    if not isinstance(body, dict):
        raise RunnerError("bad response from runner: a line that is not an object")
    try:
        return parse_completion_line(body)
    except ProtocolError as exc:
        raise RunnerError(f"bad response from runner: {exc}") from None
    except RunnerReported as exc:
        raise RunnerError(str(exc)) from None
