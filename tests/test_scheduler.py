"""Scheduler decisions against a fake runner: reuse, reload, expiry, eviction, the queue.

No wall-clock time anywhere: the scheduler's clock is a ``FakeClock`` the tests
move, expiry is driven by calling ``expire_due()``, loads are held open with
events, and ``settle()`` only yields to the event loop until it is quiet.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.errors import (
    EngineCrashed,
    InsufficientMemory,
    InvalidKeepAlive,
    InvalidOption,
    LoadError,
    LoadRequiredFull,
    QueueFull,
    RunnerError,
)
from pollama.ggufmeta import GGUFModel
from pollama.llm.spare import SpareRunner
from pollama.memory.layout import LayoutPolicy
from pollama.options.load import LoadConfig
from pollama.scheduler.keepalive import load_options, parse_keep_alive
from pollama.scheduler.scheduler import Lease, ModelSpec, Scheduler
from pollama.settings import Settings
from pollama.units import GiB

SYSTEM = SystemInfo(total_memory=64 * GiB, free_memory=32 * GiB, free_swap=0, thread_count=8)
WATCHDOG = 10.0
GPU = DeviceInfo(DeviceID("CUDA", "0"), "fake", 24 * GiB, 20 * GiB, compute_major=8)


def gguf(name: str, context_length: int = 8192) -> GGUFModel:
    return GGUFModel(
        path=Path(f"/models/{name}.gguf"),
        version=3,
        file_size=0,
        data_offset=0,
        metadata={"general.architecture": "llama", "llama.context_length": context_length},
        tensors=(),
    )


def spec(name: str, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name=name, model=gguf(name), digest=f"digest-{name}", **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeServer:
    """A runner that loads and closes on command and records what it was asked."""

    def __init__(self, factory: FakeFactory, spec: ModelSpec, config: LoadConfig) -> None:
        self.factory = factory
        self.spec = spec
        self.config = config
        self.policies: list[LayoutPolicy] = []
        self.exited = False
        self.closed = False
        self.ping_error: Exception | None = None
        self.memory = None
        self.progress = 0.0

    @property
    def pid(self) -> int:
        return 1000 + self.factory.servers.index(self)

    @property
    def load_progress(self) -> float:
        return self.progress

    @property
    def context_length(self) -> int:
        return self.config.num_ctx

    async def load(
        self, system: SystemInfo, gpus: Sequence[DeviceInfo], policy: LayoutPolicy
    ) -> list[DeviceID]:
        self.policies.append(policy)
        self.factory.load_started.set()
        if self.factory.gate is not None:
            await self.factory.gate.wait()
        self.factory.clock.now += self.factory.load_seconds
        error = self.factory.errors.get(self.spec.name)
        if error is None and self.factory.crash is not None:
            error = self.factory.crash(self)
        if error is not None:
            raise error
        if policy.require_full and self.spec.name in self.factory.needs_whole_gpu:
            raise LoadRequiredFull()
        return [g.id for g in gpus]

    async def wait_until_running(self) -> None:
        pass

    async def ping(self) -> None:
        if self.ping_error is not None:
            raise self.ping_error

    def has_exited(self) -> bool:
        return self.exited

    def memory_size(self) -> tuple[int, int]:
        return 3 * GiB, 2 * GiB

    async def close(self) -> None:
        self.closed = self.exited = True


@dataclass
class FakeFactory:
    clock: FakeClock
    servers: list[FakeServer] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)
    """Model name → the error its loads raise."""
    needs_whole_gpu: set[str] = field(default_factory=set)
    """Models that do not fit beside others: LoadRequiredFull whenever it is required."""
    gate: asyncio.Event | None = None
    """Loads wait for it while set to an event."""
    load_started: asyncio.Event = field(default_factory=asyncio.Event)
    load_seconds: float = 2.0
    crash: Callable[[FakeServer], BaseException | None] | None = None
    """Decides, per server, an error its load raises (after ``errors``)."""

    async def __call__(
        self, spec: ModelSpec, config: LoadConfig, gpus: Sequence[DeviceInfo]
    ) -> FakeServer:
        server = FakeServer(self, spec, config)
        self.servers.append(server)
        return server

    def of(self, name: str) -> list[FakeServer]:
        return [s for s in self.servers if s.spec.name == name]


@dataclass
class World:
    scheduler: Scheduler
    factory: FakeFactory
    clock: FakeClock

    async def use(
        self, name: str, options: dict[str, Any] | None = None, keep_alive: float | None = None
    ) -> FakeServer:
        """One request that starts and ends: the server that served it."""
        async with await self.scheduler.acquire(spec(name), options or {}, keep_alive) as lease:
            server = lease.server
        assert isinstance(server, FakeServer)
        return server

    def loaded(self) -> list[str]:
        return sorted(m.name for m in self.scheduler.running())


def scenario(
    body: Callable[[World], Awaitable[None]],
    gpus: Sequence[DeviceInfo] = (),
    cpu_path: Callable[[], Awaitable[ExtraBuffers]] | None = None,
    **settings: Any,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        factory = FakeFactory(clock)
        extra: dict[str, Any] = {"cpu_path": cpu_path} if cpu_path is not None else {}
        scheduler = Scheduler(
            Settings(**settings),
            server_factory=factory,
            system_probe=lambda: SYSTEM,
            gpu_probe=lambda: list(gpus),
            clock=clock,
            **extra,
        )
        try:
            # A watchdog, not a timing assertion: a scheduler bug fails instead of hanging.
            await asyncio.wait_for(body(World(scheduler, factory, clock)), WATCHDOG)
        finally:
            await scheduler.shutdown()

    asyncio.run(main())


async def settle() -> None:
    """Yield to the event loop until every task is blocked (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


def server_of(lease: Lease) -> FakeServer:
    assert isinstance(lease.server, FakeServer)
    return lease.server


# -- reuse and reload -----------------------------------------------------------------------


def test_same_options_reuse_the_runner_and_report_load_time_once() -> None:
    async def body(w: World) -> None:
        first = await w.scheduler.acquire(spec("a"), {"num_ctx": 2048}, None)
        await first.release()
        second = await w.scheduler.acquire(spec("a"), {"num_ctx": 2048}, None)
        await second.release()
        assert first.server is second.server
        assert len(w.factory.servers) == 1
        assert first.load_duration == 2_000_000_000
        assert second.load_duration == 0

    scenario(body)


def test_smaller_context_is_served_by_the_loaded_runner() -> None:
    async def body(w: World) -> None:
        big = await w.use("a", {"num_ctx": 8192})
        assert await w.use("a", {"num_ctx": 2048}) is big
        # Asking beyond the training context (8192) is clamped, so it is served too.
        assert await w.use("a", {"num_ctx": 32768}) is big
        assert len(w.factory.servers) == 1

    scenario(body)


@pytest.mark.parametrize(
    "change",
    [{"num_ctx": 4096}, {"num_batch": 256}, {"num_gpu": 0}, {"use_mmap": False}],
)
def test_larger_context_or_other_load_options_reload(change: dict[str, Any]) -> None:
    async def body(w: World) -> None:
        old = await w.use("a", {"num_ctx": 2048})
        new = await w.use("a", {"num_ctx": 2048, **change})
        assert new is not old
        assert old.closed and not new.closed
        assert w.loaded() == ["a"]

    scenario(body)


def test_modelfile_parameters_merge_under_request_options() -> None:
    async def body(w: World) -> None:
        model = spec("a", parameters={"num_ctx": 1024, "temperature": 0.2})
        async with await w.scheduler.acquire(model, {"temperature": 0.7}, None) as lease:
            assert server_of(lease).config.num_ctx == 1024
            assert lease.options == {"num_ctx": 1024, "temperature": 0.7}

    scenario(body)


def test_a_dead_runner_is_reloaded() -> None:
    async def body(w: World) -> None:
        old = await w.use("a")
        old.exited = True
        new = await w.use("a")
        assert new is not old and old.closed

    scenario(body)


def test_a_runner_failing_its_ping_is_reloaded() -> None:
    async def body(w: World) -> None:
        old = await w.use("a")
        old.ping_error = RunnerError("connection refused")
        new = await w.use("a")
        assert new is not old and old.closed

    scenario(body)


def test_changed_digest_reloads() -> None:
    async def body(w: World) -> None:
        old = await w.use("a")
        lease = await w.scheduler.acquire(ModelSpec("a", gguf("a"), digest="new"), {}, None)
        await lease.release()
        assert lease.server is not old and old.closed

    scenario(body)


def test_a_reload_waits_for_the_old_runners_requests() -> None:
    async def body(w: World) -> None:
        held = await w.scheduler.acquire(spec("a"), {"num_ctx": 2048}, None)
        bigger = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {"num_ctx": 4096}, None))
        await settle()
        assert not bigger.done() and not server_of(held).closed
        # The old runner takes no new requests meanwhile: this one waits for the reload.
        small = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {"num_ctx": 1024}, None))
        await settle()
        assert not small.done() and w.scheduler.waiting == 2
        await held.release()
        lease, small_lease = await bigger, await small
        assert server_of(held).closed
        assert lease.server is small_lease.server is not held.server
        await lease.release()
        await small_lease.release()

    scenario(body, num_parallel=2)


# -- keep_alive and expiry ------------------------------------------------------------------


def test_keep_alive_zero_unloads_when_the_request_ends() -> None:
    async def body(w: World) -> None:
        lease = await w.scheduler.acquire(spec("a"), {}, 0)
        assert w.loaded() == ["a"]
        await lease.release()
        assert server_of(lease).closed and w.loaded() == []

    scenario(body)


def test_negative_keep_alive_never_expires() -> None:
    async def body(w: World) -> None:
        await w.use("a", keep_alive=-1)
        w.clock.now += 1e9
        assert await w.scheduler.expire_due() == []
        [model] = w.scheduler.running()
        assert model.expires_at is None

    scenario(body)


@pytest.mark.parametrize("keep_alive", [1e12, 1e300])
def test_a_keep_alive_past_what_a_date_holds_lists_as_forever(keep_alive: float) -> None:
    # /api/ps was a 500 (timedelta overflow) for such a model; the fuzzer found it.
    async def body(w: World) -> None:
        await w.use("a", keep_alive=keep_alive)
        [model] = w.scheduler.running()
        assert model.expires_at is None
        async with await w.scheduler.acquire(spec("a"), {}, None):
            [busy] = w.scheduler.running()  # busy: its full keep-alive remains
            assert busy.expires_at is None

    scenario(body)


def test_keep_alive_expires_exactly_at_its_deadline() -> None:
    async def body(w: World) -> None:
        server = await w.use("a", keep_alive=10)
        released = w.clock.now
        w.clock.now = released + 9.999
        assert await w.scheduler.expire_due() == []
        [model] = w.scheduler.running()
        assert model.expires_at is not None
        w.clock.now = released + 10
        assert await w.scheduler.expire_due() == ["a"]
        assert server.closed and w.loaded() == []

    scenario(body)


def test_a_busy_runner_does_not_expire() -> None:
    async def body(w: World) -> None:
        await w.use("a", keep_alive=10)
        lease = await w.scheduler.acquire(spec("a"), {}, None)
        w.clock.now += 100
        assert await w.scheduler.expire_due() == []
        await lease.release()  # the keep-alive restarts from here
        w.clock.now += 9
        assert await w.scheduler.expire_due() == []
        w.clock.now += 1
        assert await w.scheduler.expire_due() == ["a"]

    scenario(body)


def test_omitted_keep_alive_keeps_the_runners_value() -> None:
    async def body(w: World) -> None:
        await w.use("a")  # a fresh load takes settings.keep_alive (30)
        w.clock.now += 29
        assert await w.scheduler.expire_due() == []
        await w.use("a", keep_alive=60)
        await w.use("a")  # omitted: still 60
        w.clock.now += 59
        assert await w.scheduler.expire_due() == []
        w.clock.now += 1
        assert await w.scheduler.expire_due() == ["a"]

    scenario(body, keep_alive=30.0)


def test_unload_now_or_when_the_requests_end() -> None:
    async def body(w: World) -> None:
        idle = await w.use("a")
        assert await w.scheduler.unload("a") is True
        assert idle.closed and w.loaded() == []
        assert await w.scheduler.unload("a") is False
        lease = await w.scheduler.acquire(spec("a"), {}, None)
        assert await w.scheduler.unload("a") is True
        assert not server_of(lease).closed
        await lease.release()
        assert server_of(lease).closed and w.loaded() == []

    scenario(body)


# -- eviction -------------------------------------------------------------------------------


def test_max_loaded_models_evicts_the_idle_model() -> None:
    async def body(w: World) -> None:
        a = await w.use("a")
        b = await w.use("b")
        assert a.closed and not b.closed
        assert w.loaded() == ["b"]

    scenario(body, max_loaded_models=1)


def test_eviction_picks_the_shortest_remaining_keep_alive() -> None:
    async def body(w: World) -> None:
        a = await w.use("a", keep_alive=-1)
        b = await w.use("b", keep_alive=100)
        w.clock.now += 50
        c = await w.use("c", keep_alive=120)  # 120 left, b has 50 left
        w.clock.now += 10
        await w.use("d")
        assert b.closed and not a.closed and not c.closed
        w.clock.now += 10
        await w.use("e", keep_alive=1000)
        assert c.closed and not a.closed  # forever goes last
        assert w.loaded() == ["a", "d", "e"]

    scenario(body, max_loaded_models=3)


def test_a_busy_model_is_not_evicted_the_load_waits() -> None:
    async def body(w: World) -> None:
        held = await w.scheduler.acquire(spec("a"), {}, None)
        waiting = asyncio.ensure_future(w.scheduler.acquire(spec("b"), {}, None))
        await settle()
        assert not waiting.done()
        assert w.factory.of("b") == [] and not server_of(held).closed
        await held.release()
        lease = await waiting
        assert server_of(held).closed and w.loaded() == ["b"]
        await lease.release()

    scenario(body, max_loaded_models=1)


def test_max_loaded_models_zero_means_three_per_gpu() -> None:
    async def body(w: World) -> None:
        for name in "abcdef":
            await w.use(name)
        assert w.loaded() == list("abcdef")
        await w.use("g")
        assert w.loaded() == list("bcdefg")

    scenario(body, gpus=[GPU, DeviceInfo(DeviceID("CUDA", "1"), "fake", 8 * GiB, 8 * GiB)])


def test_load_required_full_evicts_idle_models_then_loads_partially() -> None:
    async def body(w: World) -> None:
        a = await w.use("a", keep_alive=100)
        b = await w.use("b", keep_alive=200)
        w.factory.needs_whole_gpu.add("c")
        c = await w.use("c")
        attempts = w.factory.of("c")
        assert [p.require_full for s in attempts for p in s.policies] == [True, True, False]
        assert all(s.closed for s in attempts[:-1]) and c is attempts[-1]
        assert a.closed and b.closed and w.loaded() == ["c"]

    scenario(body, gpus=[GPU])


def test_load_required_full_with_only_busy_models_loads_partially() -> None:
    async def body(w: World) -> None:
        held = await w.scheduler.acquire(spec("a"), {}, None)
        w.factory.needs_whole_gpu.add("c")
        c = await w.use("c")
        assert [p.require_full for s in w.factory.of("c") for p in s.policies] == [True, False]
        assert not server_of(held).closed and not c.closed
        assert w.loaded() == ["a", "c"]
        await held.release()

    scenario(body, gpus=[GPU])


def test_first_model_loads_without_requiring_the_whole_gpu() -> None:
    async def body(w: World) -> None:
        a = await w.use("a")
        assert [p.require_full for p in a.policies] == [False]

    scenario(body, gpus=[GPU])


def test_insufficient_memory_evicts_idle_models_before_failing() -> None:
    async def body(w: World) -> None:
        a = await w.use("a")
        w.factory.errors["big"] = InsufficientMemory(100 * GiB, 32 * GiB)
        with pytest.raises(InsufficientMemory):
            await w.use("big")
        assert a.closed and w.loaded() == []
        assert len(w.factory.of("big")) == 2 and all(s.closed for s in w.factory.of("big"))

    scenario(body)


# -- the queue ------------------------------------------------------------------------------


def test_requests_waiting_for_a_slot_count_against_max_queue() -> None:
    async def body(w: World) -> None:
        running = await w.scheduler.acquire(spec("a"), {}, None)
        second = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        third = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        await settle()
        assert w.scheduler.waiting == 2 and not second.done() and not third.done()
        with pytest.raises(QueueFull):
            await w.scheduler.acquire(spec("a"), {}, None)
        await running.release()
        lease = await second
        assert not third.done()
        await lease.release()
        await (await third).release()
        assert w.scheduler.waiting == 0 and len(w.factory.servers) == 1

    scenario(body, num_parallel=1, max_queue=2)


def test_a_waiter_that_goes_away_leaves_the_queue() -> None:
    async def body(w: World) -> None:
        running = await w.scheduler.acquire(spec("a"), {}, None)
        waiter = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        await settle()
        assert w.scheduler.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert w.scheduler.waiting == 0
        await running.release()
        await w.use("a")

    scenario(body, num_parallel=1, max_queue=1)


def test_parallel_slots_are_served_at_once() -> None:
    async def body(w: World) -> None:
        leases = [await w.scheduler.acquire(spec("a"), {}, None) for _ in range(3)]
        assert w.scheduler.waiting == 0
        assert {id(lease.server) for lease in leases} == {id(leases[0].server)}
        for lease in leases:
            await lease.release()

    scenario(body, num_parallel=3, max_queue=1)


def test_requests_waiting_for_a_load_count_against_max_queue() -> None:
    async def body(w: World) -> None:
        w.factory.gate = asyncio.Event()
        first = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        await w.factory.load_started.wait()
        with pytest.raises(QueueFull):
            await w.scheduler.acquire(spec("b"), {}, None)
        w.factory.gate.set()
        await (await first).release()

    scenario(body, max_queue=1)


def test_a_load_in_progress_is_listed_with_its_progress_until_it_ends() -> None:
    async def body(w: World) -> None:
        w.factory.gate = asyncio.Event()
        first = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        await w.factory.load_started.wait()
        [server] = w.factory.servers
        server.progress = 0.25
        assert w.scheduler.loading() == {"a": 0.25}
        w.factory.gate.set()
        await (await first).release()
        assert w.scheduler.loading() == {}

    scenario(body)


# -- failures and shutdown ------------------------------------------------------------------


def test_a_failed_load_fails_every_waiter_and_closes_the_runner() -> None:
    async def body(w: World) -> None:
        w.factory.gate = asyncio.Event()
        w.factory.errors["a"] = LoadError("unable to allocate")
        waiters = [
            asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None)) for _ in range(3)
        ]
        await w.factory.load_started.wait()
        await settle()
        w.factory.gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, LoadError) and "unable to allocate" in str(r) for r in results)
        [server] = w.factory.servers
        assert server.closed and w.loaded() == [] and w.scheduler.waiting == 0
        del w.factory.errors["a"]
        await w.use("a")  # the next request loads afresh

    scenario(body)


def test_a_load_survives_its_requester_going_away() -> None:
    async def body(w: World) -> None:
        w.factory.gate = asyncio.Event()
        request = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, 10))
        await w.factory.load_started.wait()
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
        w.factory.gate.set()
        await settle()
        [server] = w.factory.servers
        assert not server.closed and w.loaded() == ["a"]  # idle, keep-alive running
        w.clock.now += 10
        assert await w.scheduler.expire_due() == ["a"]

    scenario(body)


def test_shutdown_closes_every_runner_and_refuses_requests() -> None:
    async def body(w: World) -> None:
        a = await w.use("a")
        held = await w.scheduler.acquire(spec("b"), {}, None)
        w.factory.gate = asyncio.Event()
        loading = asyncio.ensure_future(w.scheduler.acquire(spec("c"), {}, None))
        await w.factory.load_started.wait()
        await w.scheduler.shutdown()
        await w.scheduler.shutdown()
        assert all(s.closed for s in w.factory.servers)
        assert a.closed and server_of(held).closed
        with pytest.raises(LoadError, match="shutting down"):
            await loading
        with pytest.raises(LoadError, match="shutting down"):
            await w.scheduler.acquire(spec("a"), {}, None)
        await held.release()
        assert w.scheduler.running() == []

    scenario(body)


def test_running_reports_ps_rows() -> None:
    async def body(w: World) -> None:
        await w.use("a", {"num_ctx": 2048}, keep_alive=300)
        await w.use("b", keep_alive=-1)
        rows = w.scheduler.running()
        assert [r.name for r in rows] == ["b", "a"]  # the latest to expire first
        a = rows[1]
        assert a.path == "/models/a.gguf" and a.digest == "digest-a"
        assert (a.size, a.size_vram, a.context_length) == (3 * GiB, 2 * GiB, 2048)
        assert a.expires_at is not None and rows[0].expires_at is None

    scenario(body)


# -- what metrics read ---------------------------------------------------------------------


def observed(w: World) -> tuple[list[tuple[str, float]], list[str]]:
    loads: list[tuple[str, float]] = []
    restarts: list[str] = []
    w.scheduler.on_load = lambda name, seconds: loads.append((name, seconds))
    w.scheduler.on_restart = restarts.append
    return loads, restarts


def test_observers_hear_of_loads_with_their_duration() -> None:
    async def body(w: World) -> None:
        loads, restarts = observed(w)
        await w.use("a")
        await w.use("a")  # reused: no load
        await w.use("a", {"num_ctx": 8192})  # a reload for other options: not a restart
        assert loads == [("a", 2.0), ("a", 2.0)] and restarts == []

    scenario(body)


@pytest.mark.parametrize("death", ["exited", "failed ping"])
def test_a_runner_reloaded_after_it_died_is_one_restart(death: str) -> None:
    async def body(w: World) -> None:
        loads, restarts = observed(w)
        old = await w.use("a")
        if death == "exited":
            old.exited = True
        else:
            old.ping_error = RunnerError("connection refused")
        await w.use("a")
        await w.use("a")
        assert restarts == ["a"] and len(loads) == 2

    scenario(body)


def test_a_runner_that_died_under_a_request_restarts_on_the_next_one() -> None:
    async def body(w: World) -> None:
        _, restarts = observed(w)
        lease = await w.scheduler.acquire(spec("a"), {}, None)
        server_of(lease).exited = True
        await lease.release()  # unloaded as it ends: nothing loaded now
        assert w.loaded() == [] and restarts == []
        await w.use("a")
        assert restarts == ["a"]

    scenario(body)


def test_demand_counts_running_and_waiting_requests_per_model() -> None:
    async def body(w: World) -> None:
        running = await w.scheduler.acquire(spec("a"), {}, None)
        waiter = asyncio.ensure_future(w.scheduler.acquire(spec("a"), {}, None))
        await settle()
        assert w.scheduler.demand() == {"a": 2} and w.scheduler.waiting == 1
        assert [r.name for r in w.scheduler.loaded()] == ["a"]
        await running.release()
        await (await waiter).release()
        assert w.scheduler.demand() == {"a": 0} and w.scheduler.waiting == 0
        server_of(running).exited = True
        assert w.scheduler.loaded() == []

    scenario(body, num_parallel=1)


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (300, 300.0),
        (1.5, 1.5),
        (0, 0.0),
        (-1, math.inf),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("-1m", math.inf),
    ],
)
def test_parse_keep_alive(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["300", "-1", "", "five minutes", True, [5], {"s": 1}, math.nan])
def test_parse_keep_alive_rejects(value: object) -> None:
    with pytest.raises(InvalidKeepAlive):
        parse_keep_alive(value)


def test_load_options_types() -> None:
    settings = Settings(context_length=2048, num_parallel=4)
    asked = load_options({"num_ctx": 8192.0, "use_mmap": None}, settings)
    assert (asked.num_ctx, asked.parallel, asked.use_mmap) == (8192, 4, None)
    assert load_options({}, settings).num_ctx == 2048
    with pytest.raises(InvalidOption, match='option "num_ctx" must be of type integer'):
        load_options({"num_ctx": "big"}, settings)
    with pytest.raises(InvalidOption, match='option "use_mmap" must be of type boolean'):
        load_options({"use_mmap": "yes"}, settings)


# -- a load that crashes the engine ------------------------------------------------------------

EXTRA = ExtraBuffers(True, ("CPU_REPACK",), frozenset({"AVX2"}))


class CrashingPath:
    """The CPU path seam: ``EXTRA`` until told of a crash, then what ``after`` says (what
    ``CpuPath.record_crash`` does in ``auto``: PLAIN; in ``on``: EXTRA again)."""

    def __init__(self, after: ExtraBuffers) -> None:
        self.extra = EXTRA
        self.after = after
        self.asked = 0

    async def __call__(self) -> ExtraBuffers:
        self.asked += 1
        return self.extra

    def crash(self, config: LoadConfig) -> EngineCrashed:
        self.extra = self.after  # the observer hears of it before the error is raised
        return EngineCrashed(
            "killed by SIGILL", signal=4, extra_buffers=config.extra_buffers.on, during_load=True
        )


def crashing_scenario(
    body: Callable[[World, CrashingPath], Awaitable[None]], after: ExtraBuffers, crashes: int
) -> None:
    """The first ``crashes`` loads die as a runner killed by SIGILL does."""
    path = CrashingPath(after)

    async def run(w: World) -> None:
        w.factory.crash = lambda server: (
            path.crash(server.config) if w.factory.servers.index(server) < crashes else None
        )
        await body(w, path)

    scenario(run, cpu_path=path)


def test_a_load_that_crashes_with_extra_buffers_is_loaded_again_without_them() -> None:
    async def body(w: World, path: CrashingPath) -> None:
        served = await w.use("a")
        first, second = w.factory.servers
        assert first.config.extra_buffers == EXTRA and first.closed
        assert second is served and second.config.extra_buffers == PLAIN
        assert w.loaded() == ["a"]

    crashing_scenario(body, after=PLAIN, crashes=1)


def test_a_crash_on_a_path_that_does_not_change_is_not_retried() -> None:
    # POLLAMA_CPU_EXTRA_BUFFERS=on: the verdict changes nothing, so loading again would
    # only crash again.
    async def body(w: World, path: CrashingPath) -> None:
        with pytest.raises(EngineCrashed, match="SIGILL"):
            await w.use("a")
        assert len(w.factory.servers) == 1 and w.loaded() == []

    crashing_scenario(body, after=EXTRA, crashes=1)


def test_a_crash_on_the_plain_path_too_is_reported_not_looped() -> None:
    async def body(w: World, path: CrashingPath) -> None:
        with pytest.raises(EngineCrashed):
            await w.use("a")
        assert [s.config.extra_buffers for s in w.factory.servers] == [EXTRA, PLAIN]
        assert all(s.closed for s in w.factory.servers)

    crashing_scenario(body, after=PLAIN, crashes=2)


# -- the spare runner -----------------------------------------------------------------------


def test_a_taken_spare_is_replaced_only_once_the_server_has_been_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that loads, then asks at once (pollama run) must not share the CPU with a
    # new spare's imports: the refill waits for REFILL_IDLE with nothing running.
    idle = 0.2
    monkeypatch.setattr("pollama.llm.spare.REFILL_IDLE", idle)

    async def main() -> None:
        clock = FakeClock()
        spares = SpareRunner()
        started = asyncio.Event()
        monkeypatch.setattr(spares, "start", started.set)  # the seam: no real process
        scheduler = Scheduler(
            Settings(),
            server_factory=FakeFactory(clock),
            system_probe=lambda: SYSTEM,
            gpu_probe=lambda: [],
            clock=clock,
            spares=spares,
        )
        loop = asyncio.get_running_loop()
        try:
            async with await scheduler.acquire(spec("a"), {}, None):
                pass  # the load, as pollama run's empty chat
            async with await scheduler.acquire(spec("a"), {}, None):
                # Its prompt, right after: busy past the idle time, no refill meanwhile.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(started.wait(), 2 * idle)
            released = loop.time()
            await asyncio.wait_for(started.wait(), WATCHDOG)
            assert loop.time() - released >= idle * 0.9  # the loop's timer granularity
        finally:
            await scheduler.shutdown()

    asyncio.run(main())
