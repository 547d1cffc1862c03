"""The load loop (fit → alloc → commit) against a fake runner that reports synthetic memory.

The fake computes what a runner would report for each layout it is sent: every
layer costs ``weight`` bytes wherever it sits, and a GPU holding layers gets a
compute graph that may depend on how many layers are offloaded (that dependency
is what makes real layouts oscillate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import LoadError, LoadRequiredFull, RunnerDied
from pollama.llm.load import load_model
from pollama.memory.layout import Layout, LayoutPolicy, create_layout
from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.protocol.wire import LoadOperation, LoadRequest, LoadResponse
from pollama.units import GiB, MiB

FIT, ALLOC, COMMIT, CLOSE = (
    LoadOperation.FIT,
    LoadOperation.ALLOC,
    LoadOperation.COMMIT,
    LoadOperation.CLOSE,
)
S = 100 * MiB  # one layer
N = 41  # 40 blocks + the output layer
RESERVE = 457 * MiB  # CUDA's minimum reserve
SYSTEM = SystemInfo(total_memory=256 * GiB, free_memory=256 * GiB, free_swap=0, thread_count=2)
TEMPLATE = LoadRequest(operation=FIT, num_ctx=2048, parallel=1)
DEFAULT_POLICY = LayoutPolicy()


def gpu(free: int, index: int = 0) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID("CUDA", str(index)),
        name=f"sim{index}",
        total_memory=free,
        free_memory=free,
        compute_major=8,
        simulated=True,
    )


def room_for(layers: float, graph: int) -> int:
    """Free memory that leaves exactly ``layers`` × S for layers next to ``graph``
    (the layout also holds back the reserve and one layer as a buffer)."""
    return RESERVE + S + graph + int(layers * S)


def memory(
    layout: Layout, gpus: Sequence[DeviceInfo], weight: int = S, graph: int = S
) -> BackendMemory:
    """What a runner reports for ``layout``: each layer on its device, a graph on
    each GPU that holds any layer, and on the CPU."""
    owner = {layer: g.device for g in layout.gpus for layer in g.layers}

    def device(name: str, dev: DeviceID | None) -> DeviceMemory:
        weights = tuple(weight if owner.get(i) == dev else 0 for i in range(N))
        holds = any(owner.get(i) == dev for i in range(N))
        return DeviceMemory(name, dev, weights, (0,) * N, graph=graph if holds else 0)

    return BackendMemory(
        input_weights=10 * MiB,
        cpu=device("CPU", None),
        gpus=tuple(device(g.name, g.id) for g in gpus),
    )


def estimate(gpus: Sequence[DeviceInfo], graph: int = S) -> BackendMemory:
    """All layers on the CPU; every GPU already charged the graph it would get."""
    base = memory(Layout(), gpus, S, graph)
    return BackendMemory(
        base.input_weights,
        base.cpu,
        tuple(DeviceMemory(g.name, g.id, (0,) * N, (0,) * N, graph=graph) for g in gpus),
    )


class FakeRunner:
    """Answers /load like a runner: memory for the layout it was sent."""

    def __init__(
        self,
        gpus: Sequence[DeviceInfo],
        *,
        weight: int = S,
        graph: Callable[[int], int] = lambda count: S,
        alloc_ok: Callable[[int], bool] = lambda attempt: True,
        raise_on: LoadOperation | None = None,
    ) -> None:
        self.gpus = gpus
        self.weight = weight
        self.graph = graph
        self.alloc_ok = alloc_ok
        self.raise_on = raise_on
        self.requests: list[LoadRequest] = []

    async def load(self, request: LoadRequest) -> LoadResponse:
        self.requests.append(request)
        if request.operation is CLOSE:
            return LoadResponse(True)
        if request.operation is self.raise_on:
            raise RunnerDied("llama runner process has terminated: signal: SIGSEGV")
        reported = memory(request.layout, self.gpus, self.weight, self.graph(request.layout.count))
        success = True
        if request.operation is ALLOC:
            success = self.alloc_ok(len(self.sent(ALLOC)) - 1)
        return LoadResponse(success, reported, "" if success else "cudaMalloc failed")

    @property
    def operations(self) -> list[LoadOperation]:
        return [r.operation for r in self.requests]

    def sent(self, operation: LoadOperation) -> list[Layout]:
        return [r.layout for r in self.requests if r.operation is operation]

    def counts(self, operation: LoadOperation) -> list[int]:
        return [layout.count for layout in self.sent(operation)]


def run_load(
    runner: FakeRunner,
    gpus: Sequence[DeviceInfo],
    policy: LayoutPolicy = DEFAULT_POLICY,
    estimated: BackendMemory | None = None,
):
    estimated = estimated or estimate(gpus)
    initial = create_layout(SYSTEM, gpus, estimated, policy)
    return asyncio.run(
        load_model(
            runner,
            SYSTEM,
            gpus,
            request=TEMPLATE,
            layout=initial,
            memory=estimated,
            policy=policy,
        )
    )


def assert_no_repeats(runner: FakeRunner, operation: LoadOperation) -> None:
    digests = [layout.digest() for layout in runner.sent(operation)]
    assert len(digests) == len(set(digests)), f"{operation} repeated a layout"


def test_estimate_confirmed_loads_in_three_requests():
    gpus = [gpu(room_for(21, S), 0), gpu(room_for(21, S), 1)]
    runner = FakeRunner(gpus)
    result = run_load(runner, gpus)
    assert runner.operations == [FIT, ALLOC, COMMIT]
    assert result.layout.count == N
    assert sorted(result.devices()) == [g.id for g in gpus]
    assert runner.sent(COMMIT) == [result.layout]
    # The request carries the settled options, not just the layout.
    assert all(r.num_ctx == 2048 for r in runner.requests)
    assert result.memory == memory(result.layout, gpus)


def test_heavier_weights_than_estimated_settle_on_fewer_layers():
    gpus = [gpu(room_for(30.5, S))]
    runner = FakeRunner(gpus, weight=S * 3 // 2)
    result = run_load(runner, gpus)
    fits = runner.counts(FIT)
    assert fits[0] == 30  # the estimate
    assert fits == sorted(fits, reverse=True) and fits[-1] < fits[0]
    assert_no_repeats(runner, FIT)
    assert_no_repeats(runner, ALLOC)
    # The room assumed a 1 S buffer; with the measured 1.5 S one, 30 S are left
    # for layers of 1.5 S.
    assert result.layout.count == 20
    assert runner.operations[-2:] == [ALLOC, COMMIT]
    assert runner.sent(COMMIT) == [result.layout]


def test_oscillation_between_39_and_41_layers_explores_40():
    # The GPU's graph shrinks as layers leave it: 41 layers want a 2.5 S graph
    # (room for 39), 39 layers a 0.5 S one (room for 41), 40 layers 1.5 S (room for 40).
    graphs = {41: S * 5 // 2, 40: S * 3 // 2}
    gpus = [gpu(room_for(42, 0))]
    runner = FakeRunner(gpus, graph=lambda count: graphs.get(count, S // 2))
    result = run_load(runner, gpus, estimated=estimate(gpus, graph=S // 2))
    assert runner.counts(FIT) == [41, 39, 40]
    assert runner.counts(ALLOC) == [40]
    assert result.layout.count == 40
    assert runner.operations[-1] is COMMIT


def test_failed_allocations_back_off_a_tenth_at_a_time():
    gpus = [gpu(room_for(41.5, S))]
    runner = FakeRunner(gpus, alloc_ok=lambda attempt: attempt >= 2)
    result = run_load(runner, gpus)
    expected = [
        create_layout(SYSTEM, gpus, estimate(gpus), LayoutPolicy(backoff=b)).count
        for b in (0.0, 0.1, 0.2)
    ]
    assert expected[0] == N and expected[0] > expected[1] > expected[2]
    assert runner.counts(ALLOC) == expected
    assert result.layout.count == expected[2]
    assert runner.operations[-1] is COMMIT


def test_allocation_that_never_succeeds_gives_up_after_full_backoff():
    gpus = [gpu(room_for(41.5, S))]
    runner = FakeRunner(gpus, alloc_ok=lambda attempt: False)
    with pytest.raises(LoadError, match="memory layout cannot be allocated") as info:
        run_load(runner, gpus)
    assert "num_gpu" not in str(info.value)
    assert runner.operations[-1] is CLOSE
    counts = runner.counts(ALLOC)
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 0  # everything held back: nothing left to try
    assert len(counts) <= 11  # backoff 0.0, 0.1, …, 1.0


def test_forced_num_gpu_fails_at_once_when_allocation_fails():
    gpus = [gpu(room_for(41.5, S))]
    runner = FakeRunner(gpus, alloc_ok=lambda attempt: False)
    with pytest.raises(LoadError, match="num_gpu = 20"):
        run_load(runner, gpus, LayoutPolicy(num_gpu=20))
    assert runner.counts(ALLOC) == [20]
    assert runner.operations[-2:] == [ALLOC, CLOSE]


def test_client_exception_closes_the_model_and_propagates():
    gpus = [gpu(room_for(41.5, S))]
    runner = FakeRunner(gpus, raise_on=ALLOC)
    with pytest.raises(RunnerDied, match="SIGSEGV"):
        run_load(runner, gpus)
    assert runner.operations == [FIT, ALLOC, CLOSE]


def test_required_full_that_no_longer_fits_raises_load_required_full_and_closes():
    gpus = [gpu(room_for(41.5, S))]
    runner = FakeRunner(gpus, weight=S * 3 // 2)
    with pytest.raises(LoadRequiredFull):
        run_load(runner, gpus, LayoutPolicy(require_full=True))
    assert runner.operations == [FIT, CLOSE]


def test_failed_commit_closes_the_model():
    gpus = [gpu(room_for(41.5, S))]

    class CommitFails(FakeRunner):
        async def load(self, request: LoadRequest) -> LoadResponse:
            response = await super().load(request)
            if request.operation is COMMIT:
                return LoadResponse(False, response.memory, "read error")
            return response

    runner = CommitFails(gpus)
    with pytest.raises(LoadError, match="failed to commit memory for model: read error"):
        run_load(runner, gpus)
    assert runner.operations == [FIT, ALLOC, COMMIT, CLOSE]


def test_cancelled_load_still_closes_the_model():
    gpus = [gpu(room_for(41.5, S))]

    class HangsOnAlloc(FakeRunner):
        def __init__(self) -> None:
            super().__init__(gpus)
            self.entered = asyncio.Event()

        async def load(self, request: LoadRequest) -> LoadResponse:
            if request.operation is ALLOC:
                self.requests.append(request)
                self.entered.set()
                await asyncio.Event().wait()  # never answers
            return await super().load(request)

    async def scenario() -> HangsOnAlloc:
        runner = HangsOnAlloc()
        est = estimate(gpus)
        task = asyncio.create_task(
            load_model(
                runner,
                SYSTEM,
                gpus,
                request=TEMPLATE,
                layout=create_layout(SYSTEM, gpus, est, LayoutPolicy()),
                memory=est,
                policy=LayoutPolicy(),
            )
        )
        await runner.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return runner

    runner = asyncio.run(scenario())
    assert runner.operations == [FIT, ALLOC, CLOSE]


def test_cpu_only_load_uses_no_devices_and_skips_the_dry_run():
    runner = FakeRunner([])
    result = run_load(runner, [])
    assert runner.operations == [ALLOC, COMMIT]
    assert result.layout == Layout()
    assert result.devices() == []
    # The figures kept are the allocation's (measured), not the estimate.
    assert result.memory == memory(Layout(), [], S, S)


def test_cpu_only_allocation_that_fails_backs_off_and_closes_as_before():
    runner = FakeRunner([], alloc_ok=lambda attempt: False)
    with pytest.raises(LoadError, match="cannot be allocated"):
        run_load(runner, [])
    assert FIT not in runner.operations
    assert runner.operations[0] is ALLOC and runner.operations[-1] is CLOSE


def test_a_load_with_a_gpu_still_starts_with_the_dry_run():
    gpus = [gpu(room_for(N, S))]
    runner = FakeRunner(gpus)
    run_load(runner, gpus)
    assert runner.operations == [FIT, ALLOC, COMMIT]
