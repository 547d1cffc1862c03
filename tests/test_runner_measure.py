"""llama.cpp's buffer-size log lines, and spreading measured totals over layers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pollama.devices.types import DeviceID
from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.runner.buffers import BufferSizes, device_of_buffer, visible_devices
from pollama.runner.measure import _spread, measured_memory

MiB = 1024 * 1024
LINES = """\
load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
load_tensors:   CPU_REPACK model buffer size =    12.66 MiB
load_tensors:        CUDA0 model buffer size =  1000.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.75 MiB
llama_kv_cache:        CUDA0 KV buffer size =   720.00 MiB
sched_reserve:        CUDA0 compute buffer size =    98.25 MiB
sched_reserve:   CUDA_Host compute buffer size =     9.01 MiB
sched_reserve:        ROCm1 compute buffer size =     1.50 MiB
print_info: file size   = 93.80 MiB (5.84 BPW)
"""


def test_buffer_lines_by_device_and_kind():
    sizes = BufferSizes()
    for line in LINES.splitlines():
        sizes.feed(line)
    cuda = DeviceID("CUDA", "0")
    assert sizes.get(None, "model") == round(92.10 * MiB) + round(12.66 * MiB)
    assert sizes.get(cuda, "model") == 1000 * MiB
    assert sizes.get(cuda, "KV") == 720 * MiB
    assert sizes.get(cuda, "compute") == round(98.25 * MiB)
    assert sizes.get(None, "compute") == round(9.01 * MiB)
    assert sizes.get(None, "output") == round(0.75 * MiB)
    assert sizes.get(DeviceID("ROCm", "1"), "compute") == round(1.5 * MiB)
    assert sizes.devices() == {None, cuda, DeviceID("ROCm", "1")}


def test_buffer_names():
    assert device_of_buffer("CPU_Mapped") is None
    assert device_of_buffer("CUDA_Host") is None
    assert device_of_buffer("CUDA1") == DeviceID("CUDA", "1")
    assert device_of_buffer("Metal") == DeviceID("Metal", "0")


@given(
    shape=st.lists(st.integers(0, 10**9), min_size=1, max_size=40),
    total=st.integers(0, 10**11),
)
def test_spread_keeps_the_total_and_the_shape(shape, total):
    parts = _spread(tuple(shape), total)
    if sum(shape) == 0:
        assert parts == tuple(shape)
        return
    assert sum(parts) == total
    assert all(p == 0 for p, s in zip(parts, shape, strict=True) if s == 0)


def test_measured_figures_replace_the_estimate():
    n = 3
    placed = BackendMemory(
        input_weights=30 * MiB,
        cpu=DeviceMemory("CPU", None, (10 * MiB, 10 * MiB, 2 * MiB), (5 * MiB, 5 * MiB, 0), 7),
    )
    sizes = BufferSizes()
    for line in (
        "CPU_Mapped model buffer size =    55.00 MiB",
        "CPU KV buffer size =    12.00 MiB",
        "CPU compute buffer size =    99.00 MiB",
    ):
        sizes.feed(line)
    measured = measured_memory(placed, sizes, graph_only=False)
    assert measured.input_weights + measured.cpu.layer_weights == 55 * MiB
    assert measured.cpu.layer_cache == 12 * MiB
    assert measured.cpu.graph == 99 * MiB
    assert len(measured.cpu.weights) == n
    dry = measured_memory(placed, sizes, graph_only=True)
    assert dry.cpu.weights == placed.cpu.weights and dry.cpu.graph == 99 * MiB


def test_runner_device_names_map_to_the_servers():
    mapping = visible_devices({"CUDA_VISIBLE_DEVICES": "1,3", "HIP_VISIBLE_DEVICES": "2"})
    sizes = BufferSizes(device_map=mapping)
    sizes.feed("CUDA0 model buffer size =  10.00 MiB")
    sizes.feed("CUDA1 model buffer size =  20.00 MiB")
    sizes.feed("ROCm0 KV buffer size =  5.00 MiB")
    assert sizes.get(DeviceID("CUDA", "1"), "model") == 10 * MiB
    assert sizes.get(DeviceID("CUDA", "3"), "model") == 20 * MiB
    assert sizes.get(DeviceID("ROCm", "2"), "KV") == 5 * MiB
    assert visible_devices({}) == {}
