"""Per-layer memory figures from what llama.cpp reports per device.

llama.cpp reports one total per buffer (model weights, KV cache, compute graph)
per device. The layout code wants per-layer figures, so each device's
measured totals are spread over its layers in proportion to our exact
per-layer arithmetic: the sums are llama.cpp's, the shape is the model's.
"""

from __future__ import annotations

from dataclasses import replace

from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.runner.buffers import BufferSizes


def measured_memory(
    placed: BackendMemory, buffers: BufferSizes, *, graph_only: bool
) -> BackendMemory:
    """``placed`` (the estimate laid out) with llama.cpp's reported figures swapped in.

    ``graph_only``: a no-alloc dry run reports compute buffers but zero-sized
    model and KV buffers, so only the graphs are taken from it.
    """
    cpu_graph = buffers.get(None, "compute") + buffers.get(None, "output")
    cpu = replace(placed.cpu, graph=cpu_graph or placed.cpu.graph)
    gpus = tuple(replace(g, graph=buffers.get(g.device, "compute") or g.graph) for g in placed.gpus)
    input_weights = placed.input_weights
    if not graph_only:
        # LoRA adapters sit beside the weights they adapt: weights of those layers.
        cpu_weights = buffers.get(None, "model") + buffers.get(None, "LoRA")
        if cpu_weights:
            # System memory holds the input embeddings besides the CPU's layers.
            layers = _spread(cpu.weights, cpu_weights - input_weights)
            if sum(layers) == cpu_weights - input_weights:
                cpu = replace(cpu, weights=layers)
            else:
                input_weights = cpu_weights - sum(cpu.weights)
        cpu = _with_measured_cache(cpu, buffers.get(None, "KV") + buffers.get(None, "RS"))
        gpus = tuple(_with_measured(g, buffers) for g in gpus)
    return replace(placed, input_weights=input_weights, cpu=cpu, gpus=gpus)


def _with_measured(gpu: DeviceMemory, buffers: BufferSizes) -> DeviceMemory:
    weights = buffers.get(gpu.device, "model") + buffers.get(gpu.device, "LoRA")
    if weights:
        gpu = replace(gpu, weights=_spread(gpu.weights, weights))
    return _with_measured_cache(gpu, buffers.get(gpu.device, "KV") + buffers.get(gpu.device, "RS"))


def _with_measured_cache(device: DeviceMemory, total: int) -> DeviceMemory:
    if not total:
        return device
    return replace(device, cache=_spread(device.cache, total))


def _spread(shape: tuple[int, ...], total: int) -> tuple[int, ...]:
    """``total`` split in proportion to ``shape`` (exact sum); ``shape`` unchanged if all zero."""
    weight = sum(shape)
    if weight <= 0 or total < 0:
        return shape
    parts = [total * x // weight for x in shape]
    remainder = total - sum(parts)
    # Hand out the rounding remainder to the largest entries, deterministically.
    for i in sorted(range(len(shape)), key=lambda i: -shape[i])[:remainder]:
        parts[i] += 1
    return tuple(parts)
