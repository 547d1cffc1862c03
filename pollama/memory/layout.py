"""Where each layer goes: pure functions from memory figures and GPUs to a layout.

The algorithm (DESIGN.md, "Memory model and layout"):

1. GPUs are sorted by free memory, largest first (integrated GPUs after every
   discrete one), and grouped by library; the
   library group that places the most layers wins.
2. A GPU's usable space is its free memory minus its minimum reserve, the
   user's ``OLLAMA_GPU_OVERHEAD``, the backoff share, its compute graph, and
   one layer's worth (the first block + its KV) kept as a buffer.
3. ``assign_layers`` packs layers from the output layer downwards onto as few
   GPUs as possible, and if not everything fits tries again without the
   output layer (it is the biggest and least useful to offload).
4. ``find_best_fit`` binary-searches, per performance group (discrete GPUs
   before integrated ones), the smallest capacity factor that still places the
   most layers, so the layers spread evenly over the GPUs in use.
5. ``greedy_fit`` fills the last GPU of the list, then spills to the one
   before it, each scaled by the capacity factor.
6. ``verify_layout`` checks the CPU share against system memory.

Nothing here does I/O; the simulated GPUs of the tests and real ones take the
same path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import InsufficientMemory, LoadRequiredFull
from pollama.memory.types import BackendMemory, DeviceMemory

log = logging.getLogger(__name__)

# Upper bound of the capacity factor when the user forces a layer count: the
# GPUs are treated as (almost) unbounded so exactly that many layers land.
FORCED_CAPACITY = 1000.0
_SEARCH_PRECISION = 1e-6


@dataclass(frozen=True)
class GPULayers:
    """The layers one device holds, ascending."""

    device: DeviceID
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """Layers per GPU; every layer not listed runs on the CPU."""

    gpus: tuple[GPULayers, ...] = ()

    @property
    def count(self) -> int:
        """Layers offloaded to GPUs."""
        return sum(len(g.layers) for g in self.gpus)

    def devices(self) -> tuple[DeviceID, ...]:
        return tuple(g.device for g in self.gpus if g.layers)

    def device_of(self, layer: int) -> DeviceID | None:
        return next((g.device for g in self.gpus if layer in g.layers), None)

    def digest(self) -> str:
        """A stable hash (same layout → same digest in any process) for cycle detection."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def __str__(self) -> str:
        if not self.count:
            return "cpu"
        return " ".join(f"{g.device}[{format_layers(g.layers)}]" for g in self.gpus if g.layers)


@dataclass(frozen=True)
class LayoutPolicy:
    """The knobs that shape a layout, settled before layout starts."""

    num_gpu: int = -1
    """Layers to offload; -1 = as many as fit, 0 = none."""
    require_full: bool = False
    """Fail with LoadRequiredFull unless every layer lands on a GPU."""
    spread: bool = False
    """OLLAMA_SCHED_SPREAD: use all GPUs of a library rather than the fewest."""
    gpu_overhead: int = 0
    """OLLAMA_GPU_OVERHEAD: bytes kept free on every GPU."""
    backoff: float = 0.0
    """Share of each GPU's free memory held back after a failed allocation."""


def create_layout(
    system: SystemInfo,
    gpus: Sequence[DeviceInfo],
    memory: BackendMemory,
    policy: LayoutPolicy,
) -> Layout:
    """Build a layout from the current memory figures and check the CPU side fits."""
    layout = build_layout(gpus, memory, policy)
    verify_layout(system, gpus, memory, layout, policy)
    return layout


def build_layout(gpus: Sequence[DeviceInfo], memory: BackendMemory, policy: LayoutPolicy) -> Layout:
    if policy.num_gpu == 0 or not gpus:
        return Layout()
    layer_sizes = memory.layer_sizes()
    buffer = layer_sizes[0] if len(layer_sizes) > 1 else 0
    # Integrated GPUs share system memory and are slower: they come last, however
    # much they report free. Ties are broken by id so the same GPUs given in any
    # order yield the same layout.
    ordered = sorted(gpus, key=lambda g: (g.integrated, -g.free_memory, g.id))
    best = Layout()
    for library in dict.fromkeys(g.library for g in ordered):
        members = [g for g in ordered if g.library == library]
        usable, last_used = _usable_space(members, memory, policy, buffer)
        layout = assign_layers(layer_sizes, usable, policy, last_used)
        if layout.count > best.count:
            best = layout
    return best


def _usable_space(
    gpus: list[DeviceInfo], memory: BackendMemory, policy: LayoutPolicy, buffer: int
) -> tuple[list[tuple[DeviceInfo, int]], int]:
    """Each GPU with the bytes it can give to layers, and the index of the last GPU
    that already holds a graph (it stays in use: dropping it would lose what the
    runner told us about it and invite cycling)."""
    usable: list[tuple[DeviceInfo, int]] = []
    last_used = 0
    for i, gpu in enumerate(gpus):
        reported = memory.gpu(gpu.id)
        if reported is None:
            usable.append((gpu, 0))  # the runner does not see this device
            continue
        if reported.graph:
            last_used = i
        reserved = (
            int(gpu.free_memory * policy.backoff)
            + gpu.minimum_memory
            + policy.gpu_overhead
            + reported.graph
            + buffer
        )
        usable.append((gpu, max(0, gpu.free_memory - reserved)))
    return usable, last_used


def assign_layers(
    layer_sizes: Sequence[int],
    gpus: Sequence[tuple[DeviceInfo, int]],
    policy: LayoutPolicy,
    last_used: int = 0,
) -> Layout:
    """Place the most layers on the fewest GPUs; without the output layer if that helps."""
    sizes = list(layer_sizes)
    layout = Layout()
    for _ in range(2):
        requested = min(len(sizes), policy.num_gpu) if policy.num_gpu >= 0 else -1
        if policy.spread:
            layout = find_best_fit(sizes, gpus, requested, force=not policy.require_full)
        else:
            for i in range(last_used, len(gpus)):
                force = i == len(gpus) - 1 and not policy.require_full
                layout = find_best_fit(sizes, gpus[: i + 1], requested, force)
                if layout.count in (len(sizes), requested):
                    break
        # Even when the requested count is met, dropping the output layer may
        # let more of the repeating layers fit, so only stop on a full fit.
        if layout.count == len(sizes):
            return layout
        sizes = sizes[:-1]
    return layout


def find_best_fit(
    layer_sizes: Sequence[int],
    gpus: Sequence[tuple[DeviceInfo, int]],
    requested: int,
    force: bool,
) -> Layout:
    """Per performance group, the smallest capacity factor that places the most layers."""
    sizes = list(layer_sizes)
    placed: list[GPULayers] = []
    for group in _by_performance(gpus):
        high = FORCED_CAPACITY if requested >= 0 and force else 1.0
        low = 0.0
        best = greedy_fit(sizes, group, high, requested)
        most = _count(best)
        while high - low > _SEARCH_PRECISION:
            mid = (low + high) / 2
            trial = greedy_fit(sizes, group, mid, requested)
            if _count(trial) == most:
                high, best = mid, trial
            else:
                low = mid
        taken = _count(best)
        sizes = sizes[: len(sizes) - taken]
        if requested >= 0:
            requested -= taken
        placed = best + placed
    return Layout(tuple(g for g in placed if g.layers))


def greedy_fit(
    layer_sizes: Sequence[int],
    gpus: Sequence[tuple[DeviceInfo, int]],
    capacity: float,
    requested: int,
) -> list[GPULayers]:
    """Fill the last GPU from the top layer down, spilling to the previous GPU."""
    if not gpus:
        return []
    device = len(gpus) - 1
    assigned: list[list[int]] = [[]]
    owners = [gpus[device][0].id]
    free = int(gpus[device][1] * capacity)
    top = len(layer_sizes) - 1
    for layer in range(top, -1, -1):
        if 0 <= requested <= top - layer:
            break
        while layer_sizes[layer] > free:
            device -= 1
            if device < 0:
                return _to_gpu_layers(owners, assigned)
            assigned.insert(0, [])
            owners.insert(0, gpus[device][0].id)
            free = int(gpus[device][1] * capacity)
        assigned[0].insert(0, layer)
        free -= layer_sizes[layer]
    return _to_gpu_layers(owners, assigned)


def verify_layout(
    system: SystemInfo,
    gpus: Sequence[DeviceInfo],
    memory: BackendMemory,
    layout: Layout,
    policy: LayoutPolicy,
) -> None:
    """Raise when the layout's CPU share cannot be held, or when all-GPU was required."""
    cpu_size = place(memory, layout).cpu_total
    n_layers = memory.n_layers
    if policy.require_full:
        short_of_request = policy.num_gpu < 0 or layout.count < policy.num_gpu
        if gpus and layout.count < n_layers and short_of_request:
            raise LoadRequiredFull(
                f"unable to load full model on GPU: {layout.count}/{n_layers} layers fit"
            )
        if cpu_size > system.free_memory:
            raise LoadRequiredFull(
                "unable to load model: its system-memory share exceeds free memory"
            )
    available = system.free_memory + system.free_swap
    if cpu_size > available:
        raise InsufficientMemory(cpu_size, available)
    if gpus and layout.count == 0 and policy.num_gpu != 0:
        log.debug("insufficient VRAM to load any model layers")


def place(memory: BackendMemory, layout: Layout) -> BackendMemory:
    """Move each layer's weights and KV to the device the layout gives it.

    A GPU holding layers keeps (or gets) the graph the memory figures name for
    it; the CPU keeps its graph only while it still runs a layer.
    """
    n = memory.n_layers
    out = memory.output_layer
    sizes_w = [0] * n
    sizes_c = [0] * n
    for dev in (memory.cpu, *memory.gpus):
        for i in range(n):
            sizes_w[i] += dev.weights[i]
            sizes_c[i] += dev.cache[i]
    on_gpu_now = any(g.weights[out] for g in memory.gpus)
    extra = memory.tied_output
    cpu_out_weight = sizes_w[out] - extra if on_gpu_now else sizes_w[out]
    gpu_out_weight = sizes_w[out] if on_gpu_now else sizes_w[out] + extra

    devices = {g.device: g for g in memory.gpus}
    new_gpus: list[DeviceMemory] = []
    owner = {layer: g.device for g in layout.gpus for layer in g.layers}
    for device, current in devices.items():
        w = [0] * n
        c = [0] * n
        for i in range(n):
            if owner.get(i) == device:
                w[i] = gpu_out_weight if i == out else sizes_w[i]
                c[i] = sizes_c[i]
        holds = any(owner.get(i) == device for i in range(n))
        graph = (current.graph or memory.graph_estimate) if holds else 0
        new_gpus.append(replace(current, weights=tuple(w), cache=tuple(c), graph=graph))
    cpu_w = [0 if i in owner else (cpu_out_weight if i == out else sizes_w[i]) for i in range(n)]
    cpu_c = [0 if i in owner else sizes_c[i] for i in range(n)]
    cpu_graph = (memory.cpu.graph or memory.graph_estimate) if len(owner) < n else 0
    cpu = replace(memory.cpu, weights=tuple(cpu_w), cache=tuple(cpu_c), graph=cpu_graph)
    return replace(memory, cpu=cpu, gpus=tuple(new_gpus))


def _by_performance(
    gpus: Sequence[tuple[DeviceInfo, int]],
) -> list[list[tuple[DeviceInfo, int]]]:
    """Discrete GPUs first, integrated ones after: the top layers go to the fast group."""
    discrete = [g for g in gpus if not g[0].integrated]
    integrated = [g for g in gpus if g[0].integrated]
    return [group for group in (discrete, integrated) if group]


def _count(assignments: Sequence[GPULayers]) -> int:
    return sum(len(g.layers) for g in assignments)


def _to_gpu_layers(owners: list[DeviceID], assigned: list[list[int]]) -> list[GPULayers]:
    return [GPULayers(d, tuple(layers)) for d, layers in zip(owners, assigned, strict=True)]


def format_layers(layers: Sequence[int]) -> str:
    """Layer numbers as ranges: ``(0, 1, 2, 5, 7, 8)`` → ``"0-2,5,7-8"``; none → ``"-"``."""
    if not layers:
        return "-"
    parts: list[str] = []
    start = prev = layers[0]
    for layer in layers[1:]:
        if layer != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = layer
        prev = layer
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)
