"""LoRA adapters' memory: their tensors, counted with the layer whose weights they adapt.

llama.cpp allocates each adapter's A and B matrices in a buffer of the device that
holds the weight they adapt (it logs "LoRA buffer size" per buffer); repacked CPU
weights get a plain CPU buffer, so the device is the same. An adapter therefore adds
its tensor bytes to that layer's weights, wherever the layer goes: ``blk.N.*`` to block
N, ``output*`` to the output layer, anything else (``token_embd``) to the input weights.
Only ``.lora_a``/``.lora_b`` tensors are loaded; llama.cpp skips the rest (norms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pollama.ggufmeta import GGUFModel
from pollama.ggufmeta.records import layer_group_name
from pollama.memory.types import BackendMemory

_LOADED = (".lora_a", ".lora_b")
_OUTPUT = ("output", "output_norm")


@dataclass(frozen=True)
class AdapterBytes:
    """Adapter bytes per layer (blocks, then the output layer) and for the input."""

    layers: tuple[int, ...]
    inputs: int

    @property
    def total(self) -> int:
        return sum(self.layers) + self.inputs


def adapter_bytes(adapters: Sequence[GGUFModel], n_blocks: int) -> AdapterBytes:
    """What ``adapters`` add to a model of ``n_blocks`` blocks, by layer."""
    layers = [0] * (n_blocks + 1)
    inputs = 0
    for adapter in adapters:
        for tensor in adapter.tensors:
            if not tensor.name.endswith(_LOADED):
                continue
            group = layer_group_name(tensor.name)
            block = group.removeprefix("blk.")
            if group.startswith("blk.") and block.isdigit() and int(block) < n_blocks:
                layers[int(block)] += tensor.n_bytes
            elif group in _OUTPUT:
                layers[n_blocks] += tensor.n_bytes
            else:
                inputs += tensor.n_bytes
    return AdapterBytes(tuple(layers), inputs)


def with_adapters(memory: BackendMemory, adapters: Sequence[GGUFModel]) -> BackendMemory:
    """An estimate with every layer on the CPU (before placement), adapters added as
    weights of the layers they adapt; ``memory`` itself when there are none."""
    if not adapters:
        return memory
    extra = adapter_bytes(adapters, memory.n_layers - 1)
    weights = tuple(w + a for w, a in zip(memory.cpu.weights, extra.layers, strict=True))
    return replace(
        memory,
        input_weights=memory.input_weights + extra.inputs,
        cpu=replace(memory.cpu, weights=weights),
    )
