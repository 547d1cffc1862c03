"""The server's first answer to "where does this model go?", before any runner runs.

Estimate the memory from the GGUF, then lay it out; a GPU that gets layers
also gets a compute graph, which shrinks its room for layers, so lay out again
until the set of GPUs in use stops growing. The runner's measured figures
later refine this in the load loop (``LlamaServer``), through the same layout
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pollama.devices.types import DeviceInfo, SystemInfo
from pollama.ggufmeta import GGUFModel
from pollama.memory.estimate import estimate_memory
from pollama.memory.layout import GPULayers, Layout, LayoutPolicy, create_layout, place
from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.options.load import LoadConfig


@dataclass(frozen=True)
class Placement:
    layout: Layout
    memory: BackendMemory
    """The estimate with each layer moved to its device."""
    config: LoadConfig


def plan_placement(
    model: GGUFModel,
    config: LoadConfig,
    system: SystemInfo,
    gpus: Sequence[DeviceInfo],
    policy: LayoutPolicy,
    projector: GGUFModel | None = None,
    *,
    adapters: Sequence[GGUFModel] = (),
    draft: GGUFModel | None = None,
) -> Placement:
    memory = estimate_memory(
        model, config, gpus, projector=projector, adapters=adapters, draft=draft
    )
    layout = Layout()
    while True:
        previous = layout
        layout = create_layout(system, gpus, memory, policy)
        if len(layout.devices()) <= len(previous.devices()):
            break
        for device in layout.devices():
            memory = memory.with_gpu_graph(device, memory.graph_estimate)
    return Placement(layout=layout, memory=place(memory, layout), config=config)


def estimate_for_layout(
    model: GGUFModel,
    config: LoadConfig,
    measured: BackendMemory,
    projector: GGUFModel | None = None,
    *,
    adapters: Sequence[GGUFModel] = (),
    draft: GGUFModel | None = None,
) -> BackendMemory:
    """The estimate of ``model`` placed as a runner placed it: each GPU holding the layers
    it holds in ``measured``. (The layout the load started from may differ; this one
    compares like with like, for the metrics' estimated-vs-measured figures.)"""
    estimate = estimate_memory(model, config, projector=projector, adapters=adapters, draft=draft)
    n = estimate.n_layers
    gpus = tuple(DeviceMemory.empty(g.name, g.device, n) for g in measured.gpus)
    layout = Layout(
        tuple(GPULayers(g.device, g.layers()) for g in measured.gpus if g.device is not None)
    )
    return place(replace(estimate, gpus=gpus), layout)
