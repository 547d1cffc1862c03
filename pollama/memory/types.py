"""How much memory a model needs, and where: the seed's ``BackendMemory``.

Layers are numbered ``0 .. n_blocks - 1`` for the repeating blocks and
``n_blocks`` for the output layer (output norm + LM head). Input weights (the
token embeddings) always stay in system memory.

The same types carry the server's estimate (``pollama.memory.estimate``) and,
from the runner, what llama.cpp measured; the layout code reads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pollama.devices.types import DeviceID


@dataclass(frozen=True)
class DeviceMemory:
    """What one device holds: weights and KV cache per layer, and its compute graph."""

    name: str
    device: DeviceID | None
    """None for the CPU (system memory)."""
    weights: tuple[int, ...]
    cache: tuple[int, ...]
    graph: int = 0

    @property
    def layer_weights(self) -> int:
        return sum(self.weights)

    @property
    def layer_cache(self) -> int:
        return sum(self.cache)

    @property
    def size(self) -> int:
        return self.layer_weights + self.layer_cache + self.graph

    def layers(self) -> tuple[int, ...]:
        """Layers that have anything on this device."""
        pairs = enumerate(zip(self.weights, self.cache, strict=True))
        return tuple(i for i, (w, c) in pairs if w or c)

    @classmethod
    def empty(cls, name: str, device: DeviceID | None, n_layers: int) -> DeviceMemory:
        return cls(name=name, device=device, weights=(0,) * n_layers, cache=(0,) * n_layers)


@dataclass(frozen=True)
class ProjectorMemory:
    """A vision projector: its weights and the compute buffer it encodes images in."""

    weights: int
    graph: int
    device: DeviceID | None = None
    """None: system memory (where the runner keeps it)."""

    @property
    def size(self) -> int:
        return self.weights + self.graph


@dataclass(frozen=True)
class DraftMemory:
    """A draft model (speculative decoding) and its own context, in system memory: the
    runner keeps it on the CPU whatever the target's layout."""

    weights: int
    cache: int
    graph: int
    """Its compute buffer and logits."""

    @property
    def size(self) -> int:
        return self.weights + self.cache + self.graph


@dataclass(frozen=True)
class BackendMemory:
    """The memory of one loaded (or planned) model across the CPU and every GPU."""

    input_weights: int
    cpu: DeviceMemory
    gpus: tuple[DeviceMemory, ...] = ()
    tied_output: int = 0
    """Bytes the output layer needs on a GPU beyond its CPU figure: with tied
    embeddings the LM head *is* ``token_embd``, shared with the input on the CPU
    but copied when the output layer is offloaded."""
    graph_estimate: int = field(default=0, compare=False)
    """The compute graph a device gets once it runs any layer (in an estimate;
    measured figures carry each device's own graph instead)."""
    projector: ProjectorMemory | None = None
    """The vision projector loaded beside the model, if any."""
    draft: DraftMemory | None = None
    """The draft model loaded beside it, if any (always in system memory)."""

    @property
    def n_layers(self) -> int:
        """Block count + 1 (the output layer)."""
        return len(self.cpu.weights)

    @property
    def output_layer(self) -> int:
        return self.n_layers - 1

    def layer_sizes(self) -> list[int]:
        """What each layer costs on a GPU: weights + KV, wherever it sits now."""
        sizes = [w + c for w, c in zip(self.cpu.weights, self.cpu.cache, strict=True)]
        for gpu in self.gpus:
            for i, (w, c) in enumerate(zip(gpu.weights, gpu.cache, strict=True)):
                sizes[i] += w + c
        out = self.output_layer
        if self.tied_output and not any(gpu.weights[out] for gpu in self.gpus):
            sizes[out] += self.tied_output
        return sizes

    def gpu(self, device: DeviceID) -> DeviceMemory | None:
        return next((g for g in self.gpus if g.device == device), None)

    def vram_by_gpu(self, device: DeviceID) -> int:
        gpu = self.gpu(device)
        return (gpu.size if gpu else 0) + self._projector_on(device)

    def memory_size(self) -> tuple[int, int]:
        """(total, vram) in bytes, as the seed's ``MemorySize`` reports them."""
        vram = sum(g.size for g in self.gpus)
        projector = self.projector
        if projector is not None and projector.device is not None:
            vram += projector.size
        return self.cpu_total + vram, vram

    @property
    def cpu_total(self) -> int:
        """System memory: input weights + the CPU's layers and graph (+ a projector there,
        + a draft model)."""
        draft = self.draft.size if self.draft is not None else 0
        return self.input_weights + self.cpu.size + self._projector_on(None) + draft

    def _projector_on(self, device: DeviceID | None) -> int:
        projector = self.projector
        return projector.size if projector is not None and projector.device == device else 0

    def processor(self) -> str:
        """Where the model runs, as ``ollama ps`` shows it: "100% GPU", "48%/52% CPU/GPU".

        Input embeddings are a lookup table that always stays in system memory;
        they do no compute, so they do not count against the GPU share.
        """
        total, vram = self.memory_size()
        compute = total - self.input_weights
        if vram == 0 or compute <= 0:
            return "100% CPU"
        if vram >= compute:
            return "100% GPU"
        cpu_share = min(99, max(1, round(100 * (compute - vram) / compute)))
        return f"{cpu_share}%/{100 - cpu_share}% CPU/GPU"

    def with_gpu_graph(self, device: DeviceID, graph: int) -> BackendMemory:
        gpus = tuple(replace(g, graph=graph) if g.device == device else g for g in self.gpus)
        return replace(self, gpus=gpus)
