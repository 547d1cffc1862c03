"""The scheduler: which runner serves a request, when models load and unload.

    scheduler = Scheduler.create(settings)          # or inject the collaborators
    async with await scheduler.acquire(spec, options, keep_alive) as lease:
        async for piece in lease.server.completion(request): ...
    await scheduler.shutdown()

Rules (OLLAMA_API.md, "Scheduler behaviour", and where pollama does better):

- A loaded runner serves a request whose load-time options match, or that asks
  for a smaller ``num_ctx`` than it has (no reload just to shrink); anything
  else, a runner that exited or fails a ping, reloads the model.
- Every waiting request counts against ``max_queue`` — waiting for a load *and*
  waiting for a free slot of a loaded runner (``parallel`` per runner); one too
  many raises ``QueueFull`` at once.
- Loads run one at a time, each a task of its own (a client that leaves aborts
  no load others wait for); a failed load fails its waiters, leaves no runner.
- At ``max_loaded_models`` an idle runner is evicted (shortest remaining
  keep-alive first), else the load waits for one to go idle; an evicted
  runner's process has exited before the next load measures free memory.
- With other models loaded a load first requires the whole model on GPUs; if
  it does not fit, idle models are evicted one by one, and when none is left
  to evict it loads partially offloaded.
- When a runner's last request ends: ``keep_alive <= 0`` unloads it, otherwise
  it expires ``keep_alive`` seconds later (``expire_due``, called by a timer
  task that sleeps until the next deadline of the injected clock).

Observers (``on_load``, ``on_restart``) hear of finished loads and of runners
reloaded after they died; ``loaded()``, ``demand()`` and ``waiting`` are read at
any time. Both serve metrics; the scheduler knows nothing of how they are kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pollama.devices import discover_gpus, system_info
from pollama.devices.types import DeviceInfo, SystemInfo
from pollama.engine.cpu_path import CpuPath
from pollama.engine.crash import signal_name
from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.errors import (
    EngineCrashed,
    InsufficientMemory,
    LoadError,
    LoadRequiredFull,
    PollamaError,
    QueueFull,
)
from pollama.llm.interface import LlamaServerLike
from pollama.llm.spare import SpareRunner
from pollama.memory.layout import LayoutPolicy
from pollama.options.load import LoadConfig, LoadOptions, resolve_load_options
from pollama.scheduler.keepalive import load_options, normalize_keep_alive
from pollama.scheduler.loaded import (
    Lease,
    LoadedModel,
    ModelSpec,
    PendingLoad,
    RunningModel,
    ServerFactory,
    eviction_order,
    is_forever,
    llama_server_factory,
)
from pollama.settings import Settings

log = logging.getLogger(__name__)

PING_TIMEOUT = 10.0
"""Seconds an idle runner has to answer a ping before it is reloaded."""
MODELS_PER_GPU = 3
MIN_TIMER_DELAY = 0.001
"""Seconds; the expiry timer never sleeps less."""


async def _plain_path() -> ExtraBuffers:
    return PLAIN


class Scheduler:
    """Loads, shares, expires and evicts runners. All methods run on one event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        server_factory: ServerFactory,
        system_probe: Callable[[], SystemInfo],
        gpu_probe: Callable[[], list[DeviceInfo]],
        clock: Callable[[], float] = time.monotonic,
        on_load: Callable[[str, float], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        cpu_path: Callable[[], Awaitable[ExtraBuffers]] = _plain_path,
        spares: SpareRunner | None = None,
    ) -> None:
        self.on_load = on_load
        """Called with (model, seconds by the clock) when a load finishes."""
        self.on_restart = on_restart
        """Called with the model when a runner that died or failed a ping is loaded again."""
        self._settings = settings
        self._factory = server_factory
        self._system_probe = system_probe
        self._gpu_probe = gpu_probe
        self._clock = clock
        self._cpu_path = cpu_path
        self._spares = spares
        self._runners: dict[str, LoadedModel] = {}
        self._loading: dict[str, PendingLoad] = {}
        self._starting: dict[str, LlamaServerLike] = {}
        """Runners whose model is being read in now, by model name (for progress)."""
        self._closing: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._waiting_for: Counter[str] = Counter()
        self._crashed: set[str] = set()
        """Models whose runner died or failed a ping: their next load is a restart."""
        self._gpu_count: int | None = None
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False
        self._shutdown_task: asyncio.Task[None] | None = None

    @classmethod
    def create(
        cls,
        settings: Settings,
        server_factory: ServerFactory | None = None,
        cpu_path: CpuPath | None = None,
        spares: SpareRunner | None = None,
    ) -> Scheduler:
        """A scheduler over real runners, real GPUs and system memory (and ``spares``)."""
        path = cpu_path or CpuPath.for_settings(settings)
        spares = None if server_factory else spares or SpareRunner(enabled=settings.spare_runner)
        return cls(
            settings,
            server_factory=server_factory
            or llama_server_factory(settings, on_crash=path.record_crash, spares=spares),
            system_probe=lambda: system_info(threads=settings.num_thread),
            gpu_probe=lambda: discover_gpus(settings),
            cpu_path=path.extra_buffers,
            spares=spares,
        )

    def warm_up(self) -> None:
        """Start the spare runner the next load will want, while nothing runs or loads; with
        no GPU only (a load onto GPUs starts its own runner, seeing only those). Idempotent."""
        busy = self._loading or any(r.in_flight for r in self._runners.values())
        if self._spares is not None and self._spares.enabled and not self._closed and not busy:
            self._gpu_count = len(self._gpu_probe()) if self._gpu_count is None else self._gpu_count
            if self._gpu_count == 0:
                self._spares.start()

    def _refill_spare(self) -> None:
        """Replace a taken spare once idle a while: its imports must slow no request."""
        if self._spares is not None:
            self._spares.refill_later(self.warm_up)

    @property
    def waiting(self) -> int:
        """Requests waiting now, for a load or for a slot."""
        return self._waiting

    def loaded(self) -> list[LoadedModel]:
        """The loaded runners whose process is alive (read them, never change them)."""
        return [r for r in self._runners.values() if not r.dead()]

    def demand(self) -> dict[str, int]:
        """Requests per model now: holding a slot of its runner, or waiting for a load
        or a slot. The request that started a load counts twice for the moment between
        the load finishing and that request resuming."""
        counts = Counter(self._waiting_for)
        for runner in self._runners.values():
            counts[runner.name] += runner.in_flight
        return dict(counts)

    # -- requests -----------------------------------------------------------------------

    async def acquire(
        self, model: ModelSpec, options: Mapping[str, Any], keep_alive: float | None
    ) -> Lease:
        """A slot of a runner that serves ``model`` with ``options``, loading it as needed.

        ``keep_alive`` in seconds (see ``parse_keep_alive``); None keeps the runner's
        value, and a fresh load then uses ``settings.keep_alive``. Raises QueueFull
        when the request would have to wait and ``max_queue`` are waiting already,
        ValueError for a wrongly typed load-time option, and the load's error
        (LoadError, RunnerError…) when the load it waited for failed.
        """
        self._check_open()
        merged = {**model.parameters, **options}
        asked = load_options(merged, self._settings)
        keep = None if keep_alive is None else normalize_keep_alive(keep_alive)
        self._ensure_started()
        started = self._clock()
        loaded = queued = False
        try:
            while True:
                self._check_open()
                runner = self._runners.get(model.name)
                if runner is not None and self._usable(runner, model, asked):
                    if runner.in_flight < runner.parallel:
                        if await self._take(runner, keep):
                            duration = _ns(self._clock() - started) if loaded else 0
                            return Lease(runner, self._release_slot, merged, duration)
                        continue  # it failed its ping: reload
                    queued = self._enqueue(queued, model.name)
                    await self._wait_for_change()
                    continue
                queued = self._enqueue(queued, model.name)
                loaded = True
                pending = self._loading.get(model.name)
                if pending is None:
                    pending = self._start_load(model, asked, keep)
                    runner = await self._await_own_load(pending)
                    return Lease(runner, self._release_slot, merged, _ns(self._clock() - started))
                await self._await_other_load(pending, pending.serves(model, asked))
        finally:
            if queued:
                self._waiting -= 1
                self._waiting_for[model.name] -= 1
                if not self._waiting_for[model.name]:
                    del self._waiting_for[model.name]

    async def unload(self, name: str) -> bool:
        """Unload ``name`` now, or when its running requests end; False if not loaded."""
        runner = self._runners.get(name)
        if runner is None:
            return False
        runner.keep_alive = 0.0
        if runner.in_flight == 0:
            await asyncio.shield(self._unload(runner, "requested"))
        return True

    def running(self) -> list[RunningModel]:
        """``/api/ps``: the loaded runners, the latest to expire first."""
        now, wall = self._clock(), datetime.now(UTC)
        rows: list[tuple[float, RunningModel]] = []
        for runner in self._runners.values():
            if not runner.dead():
                rows.append((runner.remaining(now), runner.row(now, wall)))
        rows.sort(key=lambda item: item[0], reverse=True)
        return [row for _, row in rows]

    def loading(self) -> dict[str, float]:
        """Models being loaded now and how far each is (0–1), for progress displays."""
        return {name: server.load_progress for name, server in self._starting.items()}

    async def expire_due(self) -> list[str]:
        """Unload every idle runner whose keep-alive has run out (by the injected
        clock) or whose process has exited; the names unloaded."""
        now = self._clock()
        due = [
            r
            for r in self._runners.values()
            if r.in_flight == 0 and (r.dead() or (r.deadline is not None and r.deadline <= now))
        ]
        tasks = [self._unload(r, "exited" if r.dead() else "expired") for r in due]
        if tasks:
            await asyncio.wait(tasks)
        return [r.name for r in due]

    async def shutdown(self) -> None:
        """Close every runner and stop the timer; later ``acquire`` calls fail. Idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        self._closed = True
        self._notify()
        if self._timer is not None:
            self._timer.cancel()
        loads = [p.task for p in self._loading.values()]
        for task in loads:
            task.cancel()
        for runner in list(self._runners.values()):
            self._unload(runner, "shutdown")
        pending = [*loads, *self._closing, *([self._timer] if self._timer else [])]
        if pending:
            await asyncio.wait(pending)
        await self._settle_closes()
        if self._spares is not None:
            await self._spares.close()
        log.info("scheduler stopped")

    # -- slots --------------------------------------------------------------------------

    def _usable(self, runner: LoadedModel, spec: ModelSpec, asked: LoadOptions) -> bool:
        return not runner.draining and not runner.dead() and runner.serves(spec, asked)

    async def _take(self, runner: LoadedModel, keep: float | None) -> bool:
        """Take a slot of ``runner``; False (slot given back) if it was idle and fails a ping."""
        was_idle = runner.in_flight == 0
        runner.in_flight += 1
        runner.deadline = None
        if keep is not None:
            runner.keep_alive = keep
        if not was_idle:
            return True
        try:
            await asyncio.wait_for(runner.server.ping(), PING_TIMEOUT)
        except (PollamaError, OSError, TimeoutError) as exc:
            log.warning("runner failed ping; reloading model=%s error=%r", runner.name, exc)
            runner.failed = True
            self._release_slot(runner)
            return False
        except BaseException:
            self._release_slot(runner)
            raise
        return True

    def _release_slot(self, runner: LoadedModel) -> asyncio.Task[None] | None:
        """A request is done with ``runner``; the unload it triggers, if any."""
        runner.in_flight -= 1
        runner.last_used = self._clock()
        self._notify()
        self._refill_spare()
        if runner.in_flight > 0 or self._runners.get(runner.name) is not runner:
            return None
        if runner.dead():
            return self._unload(runner, "exited")
        if runner.draining:
            return None  # the reload waiting for it unloads it
        if runner.keep_alive <= 0:
            return self._unload(runner, "keep_alive 0")
        runner.deadline = self._clock() + runner.keep_alive
        return None

    def _enqueue(self, queued: bool, name: str) -> bool:
        if not queued:
            if self._waiting >= self._settings.max_queue:
                log.warning(
                    "queue full waiting=%d max_queue=%d", self._waiting, self._settings.max_queue
                )
                raise QueueFull()
            self._waiting += 1
            self._waiting_for[name] += 1
        return True

    # -- loading ------------------------------------------------------------------------

    def _start_load(self, spec: ModelSpec, asked: LoadOptions, keep: float | None) -> PendingLoad:
        keep_alive = self._settings.keep_alive if keep is None else keep
        task = asyncio.ensure_future(self._load(spec, asked, keep_alive))
        pending = PendingLoad(spec, asked, task)
        self._loading[spec.name] = pending
        return pending

    async def _await_own_load(self, pending: PendingLoad) -> LoadedModel:
        """The load this request started; its runner comes with a slot reserved for it."""
        try:
            return await asyncio.shield(pending.task)
        except asyncio.CancelledError:
            if pending.task.cancelled() and self._closed:
                raise _shutting_down() from None
            pending.task.add_done_callback(self._drop_reservation)
            raise

    async def _await_other_load(self, pending: PendingLoad, mine: bool) -> None:
        """Wait for a load another request started; its error is ours if it loads what
        we need (``mine``), otherwise we only wait for the load lock to come free."""
        try:
            await asyncio.shield(pending.task)
        except asyncio.CancelledError:
            if pending.task.cancelled() and self._closed:
                raise _shutting_down() from None
            raise
        except Exception:
            if mine:
                raise

    def _drop_reservation(self, task: asyncio.Task[LoadedModel]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._release_slot(task.result())

    async def _load(self, spec: ModelSpec, asked: LoadOptions, keep_alive: float) -> LoadedModel:
        try:
            async with self._load_lock:
                self._check_open()
                await self._retire(spec.name)
                await self._make_room()
                runner = await self._load_runner(spec, asked, keep_alive)
                runner.in_flight = 1  # the slot of the request that started the load
                self._runners[spec.name] = runner
                if spec.name in self._crashed:
                    self._crashed.discard(spec.name)
                    if self.on_restart is not None:
                        self.on_restart(spec.name)
                return runner
        finally:
            if self._loading.get(spec.name) is not None:
                if self._loading[spec.name].task is asyncio.current_task():
                    del self._loading[spec.name]
            self._notify()
            self._refill_spare()  # after a failed load; a loaded one holds its first slot

    async def _retire(self, name: str) -> None:
        """Unload the runner loaded under ``name`` (it cannot serve the new load's
        requests), once its requests end; it takes no new ones meanwhile."""
        while (old := self._runners.get(name)) is not None:
            if old.in_flight == 0 or old.dead():
                self._unload(old, "reload")
                return
            old.draining = True
            log.info("waiting for runner to finish before reloading model=%s", name)
            await self._wait_for_change()
            self._check_open()

    async def _make_room(self) -> None:
        if self._gpu_count is None:
            self._gpu_count = len(self._gpu_probe())
        limit = self._settings.max_loaded_models or MODELS_PER_GPU * max(1, self._gpu_count)
        while len(self._runners) >= limit:
            victim = self._victim()
            if victim is not None:
                self._unload(victim, f"max_loaded_models={limit}")
                continue
            log.info(
                "all loaded models are busy; waiting loaded=%d limit=%d", len(self._runners), limit
            )
            await self._wait_for_change()
            self._check_open()

    async def _load_runner(
        self, spec: ModelSpec, asked: LoadOptions, keep_alive: float
    ) -> LoadedModel:
        partial = False
        crash: tuple[EngineCrashed, ExtraBuffers] | None = None
        while True:
            await self._settle_closes()
            system, gpus = self._system_probe(), self._gpu_probe()
            self._gpu_count = len(gpus)
            extra = await self._cpu_path()
            if crash is not None and extra == crash[1]:
                raise crash[0]  # the same path would only crash again
            config = resolve_load_options(spec.model, asked, system, gpus, extra)
            policy = self._policy(spec, config, partial)
            started = self._clock()
            try:
                server = await self._start_server(spec, config, system, gpus, policy)
            except LoadRequiredFull as exc:
                if (victim := self._victim()) is not None:
                    self._unload(victim, f"making room for {spec.name}")
                elif policy.require_full:
                    log.info(
                        "nothing left to evict; loading partially model=%s (%s)", spec.name, exc
                    )
                    partial = True
                else:
                    raise
                continue
            except InsufficientMemory:
                if (victim := self._victim()) is None:
                    raise
                self._unload(victim, f"making room for {spec.name}")
                continue
            except EngineCrashed as exc:
                # The CPU path's verdict has heard of it: when it now says another path,
                # load once more on that one; the same path would only crash again.
                if crash is not None:
                    raise
                log.warning(
                    "load crashed the engine model=%s signal=%s extra_buffers=%s",
                    spec.name,
                    signal_name(exc.signal),
                    exc.extra_buffers,
                )
                crash = (exc, config.extra_buffers)
                continue
            seconds = self._clock() - started
            log.info("model loaded model=%s pid=%d seconds=%.2f", spec.name, server.pid, seconds)
            if self.on_load is not None:
                self.on_load(spec.name, seconds)
            return LoadedModel(spec, server, asked, config, keep_alive, last_used=self._clock())

    def _policy(self, spec: ModelSpec, config: LoadConfig, partial: bool) -> LayoutPolicy:
        """How this load may be laid out; logs what is being loaded and any warnings."""
        for warning in config.warnings:
            log.warning("%s model=%s", warning, spec.name)
        policy = LayoutPolicy(
            num_gpu=config.num_gpu,
            require_full=bool(self._runners) and not partial,
            spread=self._settings.sched_spread,
            gpu_overhead=self._settings.gpu_overhead,
        )
        log.info(
            "loading model=%s num_ctx=%d parallel=%d require_full=%s loaded=%d",
            spec.name,
            config.num_ctx,
            config.parallel,
            policy.require_full,
            len(self._runners),
        )
        return policy

    async def _start_server(
        self,
        spec: ModelSpec,
        config: LoadConfig,
        system: SystemInfo,
        gpus: Sequence[DeviceInfo],
        policy: LayoutPolicy,
    ) -> LlamaServerLike:
        """A runner with the model loaded; on any failure, closed before the error goes on."""
        server = await self._factory(spec, config, gpus)
        self._starting[spec.name] = server
        try:
            await server.load(system, gpus, policy)
            await server.wait_until_running()
        except BaseException as exc:
            log.info("load failed model=%s error=%r", spec.name, exc)
            try:
                await server.close()
            except Exception:
                log.warning("error closing runner model=%s", spec.name, exc_info=True)
            raise
        finally:
            self._starting.pop(spec.name, None)
        return server

    def _victim(self) -> LoadedModel | None:
        order = eviction_order(list(self._runners.values()), self._clock())
        return order[0] if order else None

    # -- unloading ----------------------------------------------------------------------

    def _unload(self, runner: LoadedModel, reason: str) -> asyncio.Task[None]:
        """Forget ``runner`` now and close it in a task (awaited before the next load)."""
        if self._runners.get(runner.name) is runner:
            del self._runners[runner.name]
        if runner.dead() and not self._closed:
            self._crashed.add(runner.name)
        log.info("unloading model=%s reason=%s pid=%d", runner.name, reason, runner.server.pid)
        task = asyncio.ensure_future(self._close(runner))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._notify()
        return task

    async def _close(self, runner: LoadedModel) -> None:
        try:
            await runner.server.close()
        except Exception:
            log.warning("error stopping runner model=%s", runner.name, exc_info=True)

    async def _settle_closes(self) -> None:
        while self._closing:
            await asyncio.wait(list(self._closing))

    # -- plumbing -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise _shutting_down()

    def _notify(self) -> None:
        """Wake everything waiting for the state to change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self) -> None:
        await self._changed.wait()

    def _ensure_started(self) -> None:
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._expiry_loop())

    async def _expiry_loop(self) -> None:
        """Sleep until the next deadline (or a change), then ``expire_due``."""
        while not self._closed:
            await self.expire_due()
            deadlines = [
                r.deadline
                for r in self._runners.values()
                if r.in_flight == 0 and r.deadline is not None
            ]
            # The floor keeps a deadline that is due but not yet expired (a clock
            # that moved meanwhile) from spinning the loop without yielding.
            delay = max(MIN_TIMER_DELAY, min(deadlines, default=math.inf) - self._clock())
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), None if is_forever(delay) else delay)
            except TimeoutError:
                pass


def _shutting_down() -> LoadError:
    return LoadError("server is shutting down")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))
