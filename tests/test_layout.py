"""Layout properties over random layer sizes and simulated GPUs (DESIGN.md, "Layout")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import InsufficientMemory, LoadRequiredFull
from pollama.memory.layout import (
    GPULayers,
    Layout,
    LayoutPolicy,
    build_layout,
    create_layout,
    place,
)
from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.units import GiB, MiB

RESERVE = 457 * MiB  # CUDA's minimum reserve
PLENTY = SystemInfo(total_memory=1 << 50, free_memory=1 << 50, free_swap=0, thread_count=4)


def gpu(i: int, free: int, library: str = "CUDA", integrated: bool = False) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID(library, str(i)),
        name=f"sim{i}",
        total_memory=free,
        free_memory=free,
        compute_major=8,
        integrated=integrated,
        simulated=True,
    )


def memory_for(sizes: list[int], gpus: list[DeviceInfo], graph: int = 0) -> BackendMemory:
    n = len(sizes)
    return BackendMemory(
        input_weights=0,
        cpu=DeviceMemory("CPU", None, tuple(sizes), (0,) * n, graph=graph),
        gpus=tuple(DeviceMemory.empty(g.name, g.id, n) for g in gpus),
    )


NO_POLICY = LayoutPolicy()


def usable(g: DeviceInfo, sizes: list[int], policy: LayoutPolicy = NO_POLICY) -> int:
    buffer = sizes[0]
    reserved = int(g.free_memory * policy.backoff) + RESERVE + policy.gpu_overhead + buffer
    return max(0, g.free_memory - reserved)


def bytes_on(layout: Layout, device: DeviceID, sizes: list[int]) -> int:
    return sum(sizes[i] for g in layout.gpus if g.device == device for i in g.layers)


layer_sizes = st.lists(st.integers(1 * MiB, 64 * MiB), min_size=2, max_size=48)
free_sizes = st.lists(st.integers(RESERVE, 8 * GiB), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(sizes=layer_sizes, frees=free_sizes, spread=st.booleans())
def test_no_gpu_gets_more_than_its_capacity(sizes: list[int], frees: list[int], spread: bool):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    policy = LayoutPolicy(spread=spread)
    layout = build_layout(gpus, memory_for(sizes, gpus), policy)
    for g in gpus:
        assert bytes_on(layout, g.id, sizes) <= usable(g, sizes)


@settings(max_examples=300, deadline=None)
@given(sizes=layer_sizes, frees=free_sizes)
def test_everything_on_gpu_when_it_fits(sizes: list[int], frees: list[int]):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    room = [usable(g, sizes) for g in gpus]
    # Greedy spilling wastes less than one layer per GPU, so this much room
    # always suffices; one GPU large enough for everything suffices too.
    assume(sum(sizes) <= sum(room) - len(gpus) * max(sizes) or sum(sizes) <= max(room))
    layout = build_layout(gpus, memory_for(sizes, gpus), LayoutPolicy())
    assert layout.count == len(sizes)
    placed = sorted(layer for g in layout.gpus for layer in g.layers)
    assert placed == list(range(len(sizes)))


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1 * MiB, 16 * MiB), min_size=8, max_size=48),
    frac=st.floats(0.0, 0.99),
)
def test_two_equal_gpus_split_within_one_layer(sizes: list[int], frac: float):
    total, biggest = sum(sizes), max(sizes)
    assume(total // 2 > biggest + 1)
    # Room on each GPU: enough for both together, not enough for one alone.
    room = total // 2 + biggest + int(frac * (total // 2 - biggest - 1))
    gpus = [gpu(i, RESERVE + sizes[0] + room) for i in range(2)]
    assert usable(gpus[0], sizes) == room < total
    layout = build_layout(gpus, memory_for(sizes, gpus), LayoutPolicy())
    assert layout.count == len(sizes)
    a, b = (bytes_on(layout, g.id, sizes) for g in gpus)
    assert abs(a - b) <= biggest


@settings(max_examples=300, deadline=None)
@given(sizes=layer_sizes, frees=free_sizes, num_gpu=st.integers(-1, 60))
def test_output_layer_is_first_to_go_to_cpu(sizes: list[int], frees: list[int], num_gpu: int):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    layout = build_layout(gpus, memory_for(sizes, gpus), LayoutPolicy(num_gpu=num_gpu))
    output = len(sizes) - 1
    if layout.count < len(sizes):
        assert layout.device_of(output) is None
    # Offloaded layers are always the top ones (below the output layer).
    on_gpu = sorted(i for g in layout.gpus for i in g.layers if i != output)
    if on_gpu:
        assert on_gpu == list(range(on_gpu[0], on_gpu[0] + len(on_gpu)))
        assert on_gpu[-1] == output - 1


@settings(max_examples=300, deadline=None)
@given(
    sizes=layer_sizes,
    frees=st.lists(st.integers(RESERVE + 80 * MiB, 4 * GiB), min_size=1, max_size=4),
    data=st.data(),
    spread=st.booleans(),
)
def test_forced_num_gpu_places_exactly_n(sizes, frees, data, spread):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    n = data.draw(st.integers(0, len(sizes)))
    layout = build_layout(gpus, memory_for(sizes, gpus), LayoutPolicy(num_gpu=n, spread=spread))
    assert layout.count == n


@settings(max_examples=300, deadline=None)
@given(sizes=layer_sizes, frees=free_sizes)
def test_require_full_fails_exactly_when_not_everything_fits(sizes, frees):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    memory = memory_for(sizes, gpus)
    fits = build_layout(gpus, memory, LayoutPolicy()).count == len(sizes)
    room = [usable(g, sizes) for g in gpus]
    if sum(sizes) <= max(room):
        assert fits
    if sum(sizes) > sum(room):
        assert not fits
    policy = LayoutPolicy(require_full=True)
    if fits:
        assert create_layout(PLENTY, gpus, memory, policy).count == len(sizes)
    else:
        with pytest.raises(LoadRequiredFull):
            create_layout(PLENTY, gpus, memory, policy)


@settings(max_examples=100, deadline=None)
@given(sizes=layer_sizes, frees=free_sizes, num_gpu=st.integers(-1, 50), spread=st.booleans())
def test_same_input_same_layout_and_hash(sizes, frees, num_gpu, spread):
    gpus = [gpu(i, f) for i, f in enumerate(frees)]
    policy = LayoutPolicy(num_gpu=num_gpu, spread=spread)
    first = build_layout(gpus, memory_for(sizes, gpus), policy)
    second = build_layout(list(reversed(gpus)), memory_for(sizes, list(reversed(gpus))), policy)
    assert first == second
    assert first.digest() == second.digest()


def test_digest_is_stable_across_processes_and_tells_layouts_apart():
    layout = Layout((GPULayers(DeviceID("CUDA", "0"), (3, 4, 5)),))
    code = (
        "from pollama.memory.layout import Layout, GPULayers;"
        "from pollama.devices.types import DeviceID;"
        "print(Layout((GPULayers(DeviceID('CUDA', '0'), (3, 4, 5)),)).digest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == layout.digest()
    other = Layout((GPULayers(DeviceID("CUDA", "1"), (3, 4, 5)),))
    assert other.digest() != layout.digest()
    assert Layout().digest() != layout.digest()


# --- the seed's specific rules -------------------------------------------------

SIZES = [100 * MiB] * 10 + [300 * MiB]  # 10 blocks + a large output layer


def test_packs_onto_the_fewest_gpus_largest_first():
    gpus = [gpu(0, 2 * GiB), gpu(1, 8 * GiB)]
    layout = build_layout(gpus, memory_for(SIZES, gpus), LayoutPolicy())
    assert layout.devices() == (DeviceID("CUDA", "1"),)
    assert layout.count == len(SIZES)


def test_spread_uses_every_gpu():
    gpus = [gpu(0, 8 * GiB), gpu(1, 8 * GiB)]
    layout = build_layout(gpus, memory_for(SIZES, gpus), LayoutPolicy(spread=True))
    assert set(layout.devices()) == {g.id for g in gpus}
    assert layout.count == len(SIZES)


def test_library_group_placing_most_layers_wins():
    gpus = [gpu(0, 1 * GiB, "CUDA"), gpu(0, 4 * GiB, "ROCm")]
    layout = build_layout(gpus, memory_for(SIZES, gpus), LayoutPolicy())
    assert layout.devices() == (DeviceID("ROCm", "0"),)


def test_integrated_gpu_is_used_last():
    discrete = gpu(0, RESERVE + 100 * MiB + 700 * MiB)
    integrated = gpu(1, 8 * GiB, integrated=True)
    gpus = [discrete, integrated]
    layout = build_layout(gpus, memory_for(SIZES, gpus), LayoutPolicy())
    assert layout.count == len(SIZES)
    # The top layers (the output layer first) go to the discrete GPU.
    assert layout.device_of(len(SIZES) - 1) == discrete.id
    assert layout.device_of(0) == integrated.id


def test_gpu_the_runner_does_not_report_gets_nothing():
    gpus = [gpu(0, 8 * GiB), gpu(1, 8 * GiB)]
    memory = memory_for(SIZES, gpus[:1])
    layout = build_layout(gpus, memory, LayoutPolicy(spread=True))
    assert layout.devices() == (DeviceID("CUDA", "0"),)


def test_overhead_graph_and_backoff_shrink_the_room():
    free = RESERVE + 100 * MiB + 1100 * MiB  # room for exactly 11 layers of 100 MiB
    sizes = [100 * MiB] * 12
    gpus = [gpu(0, free)]
    assert build_layout(gpus, memory_for(sizes, gpus), LayoutPolicy()).count == 11
    policy = LayoutPolicy(gpu_overhead=250 * MiB)
    assert build_layout(gpus, memory_for(sizes, gpus), policy).count == 8
    with_graph = memory_for(sizes, gpus).with_gpu_graph(gpus[0].id, 300 * MiB)
    assert build_layout(gpus, with_graph, LayoutPolicy()).count == 8
    backoff = LayoutPolicy(backoff=0.5)
    assert build_layout(gpus, memory_for(sizes, gpus), backoff).count < 11


def test_num_gpu_zero_is_cpu_only():
    gpus = [gpu(0, 80 * GiB)]
    assert build_layout(gpus, memory_for(SIZES, gpus), LayoutPolicy(num_gpu=0)).count == 0


def test_cpu_share_beyond_ram_and_swap_names_both_sizes():
    system = SystemInfo(
        total_memory=GiB, free_memory=512 * MiB, free_swap=256 * MiB, thread_count=2
    )
    with pytest.raises(InsufficientMemory) as err:
        create_layout(system, [], memory_for(SIZES, []), LayoutPolicy())
    message = str(err.value)
    assert "1.3 GiB" in message and "768 MiB" in message


def test_require_full_on_cpu_fails_when_ram_is_short():
    system = SystemInfo(total_memory=GiB, free_memory=512 * MiB, free_swap=8 * GiB, thread_count=2)
    memory = memory_for(SIZES, [])
    assert create_layout(system, [], memory, LayoutPolicy()).count == 0
    with pytest.raises(LoadRequiredFull):
        create_layout(system, [], memory, LayoutPolicy(require_full=True))


def test_place_moves_layers_and_copies_tied_embeddings_to_the_gpu():
    gpus = [gpu(0, 80 * GiB)]
    n = 4
    memory = BackendMemory(
        input_weights=30 * MiB,
        cpu=DeviceMemory("CPU", None, (10 * MiB,) * 3 + (1 * MiB,), (2 * MiB,) * 3 + (0,), 7 * MiB),
        gpus=(DeviceMemory.empty("sim0", gpus[0].id, n),),
        tied_output=30 * MiB,
        graph_estimate=7 * MiB,
    )
    assert memory.layer_sizes()[-1] == 31 * MiB  # the GPU cost of the output layer
    full = place(memory, Layout((GPULayers(gpus[0].id, (0, 1, 2, 3)),)))
    assert full.cpu.size == 0  # no layers left: no CPU graph either
    assert full.vram_by_gpu(gpus[0].id) == 3 * 12 * MiB + 31 * MiB + 7 * MiB
    total, vram = full.memory_size()
    assert total == 30 * MiB + vram
    partial = place(memory, Layout((GPULayers(gpus[0].id, (1, 2)),)))
    assert partial.cpu.layers() == (0, 3)
    assert partial.cpu.weights[3] == 1 * MiB  # on the CPU the head shares token_embd
    back = place(full, Layout())
    assert back.cpu == memory.cpu


def test_processor_label_counts_compute_memory_only():
    gpus = [gpu(0, 80 * GiB)]
    n = 4
    memory = BackendMemory(
        input_weights=500 * MiB,  # embeddings: always in system memory, no compute
        cpu=DeviceMemory("CPU", None, (100 * MiB,) * n, (0,) * n, 0),
        gpus=(DeviceMemory.empty("sim0", gpus[0].id, n),),
    )
    assert memory.processor() == "100% CPU"
    assert place(memory, Layout((GPULayers(gpus[0].id, (0, 1, 2, 3)),))).processor() == "100% GPU"
    assert place(memory, Layout((GPULayers(gpus[0].id, (0, 1, 2)),))).processor() == (
        "25%/75% CPU/GPU"
    )
    almost = place(memory, Layout((GPULayers(gpus[0].id, (0, 1, 2)),)))
    assert almost.processor() != "100% GPU"
