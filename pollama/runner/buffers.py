"""What llama.cpp says it allocated, read from its log lines.

llama.cpp reports every backend buffer it creates as a log line such as

    load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
    llama_kv_cache:        CUDA0 KV buffer size =   720.00 MiB
    sched_reserve:        CPU compute buffer size =    98.25 MiB
    llama_context:  CUDA_Host  output buffer size =     0.75 MiB
    llama_adapter_lora_init_impl:        CPU LoRA buffer size =     3.52 MiB

The buffer name says the device: ``CPU*`` and ``*_Host`` (pinned host memory)
are system memory; ``CUDA0``, ``ROCm1``, ``Vulkan0``… are GPUs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from pollama.devices.types import DeviceID

_LINE = re.compile(
    r"\b(?P<buffer>[A-Za-z_]+\d*(?:_[A-Za-z]+)?)\s+(?P<kind>model|KV|compute|output|RS|LoRA)"
    r" buffer size =\s+(?P<mib>[0-9.]+) MiB"
)
_GPU = re.compile(r"^(?P<library>CUDA|ROCm|HIP|Vulkan|Metal|SYCL|MUSA|CANN)(?P<index>\d*)$")
_MIB = 1024 * 1024


def device_of_buffer(name: str) -> DeviceID | None:
    """The device a llama.cpp buffer lives on; None for system memory."""
    if name.startswith("CPU") or name.endswith("_Host"):
        return None
    match = _GPU.match(name)
    if not match:
        return None
    library = "ROCm" if match["library"] == "HIP" else match["library"]
    return DeviceID(library, match["index"] or "0")


def visible_devices(environ: Mapping[str, str]) -> dict[DeviceID, DeviceID]:
    """llama.cpp's device names → the server's, through the ``*_VISIBLE_DEVICES``
    the server set: with ``CUDA_VISIBLE_DEVICES=1,3`` the runner's CUDA0 is CUDA:1."""
    mapping: dict[DeviceID, DeviceID] = {}
    for variable, library in (("CUDA_VISIBLE_DEVICES", "CUDA"), ("HIP_VISIBLE_DEVICES", "ROCm")):
        ids = [part.strip() for part in environ.get(variable, "").split(",") if part.strip()]
        for local, global_id in enumerate(ids):
            mapping[DeviceID(library, str(local))] = DeviceID(library, global_id)
    return mapping


@dataclass
class BufferSizes:
    """Bytes per (device, kind) where kind is model | KV | compute | output | RS | LoRA."""

    sizes: dict[tuple[DeviceID | None, str], int] = field(default_factory=lambda: defaultdict(int))
    device_map: Mapping[DeviceID, DeviceID] = field(default_factory=dict)
    """The runner's device names → the server's (see ``visible_devices``)."""

    def feed(self, line: str) -> None:
        match = _LINE.search(line)
        if match:
            device = device_of_buffer(match["buffer"])
            if device is not None:
                device = self.device_map.get(device, device)
            self.sizes[(device, match["kind"])] += round(float(match["mib"]) * _MIB)

    def get(self, device: DeviceID | None, kind: str) -> int:
        return self.sizes.get((device, kind), 0)

    def devices(self) -> set[DeviceID | None]:
        return {device for device, _ in self.sizes}

    def __bool__(self) -> bool:
        return bool(self.sizes)


# mtmd's CLIP loader reports its weights as one total and its compute buffer per device:
#   clip_ctx: CLIP using CPU backend
#   clip_model_loader: model size:         1.50 MiB
#   reserve_compute_meta:        CPU compute buffer size =     0.19 MiB
_CLIP_BACKEND = re.compile(r"CLIP using (?P<backend>\S+) backend")
_CLIP_MODEL = re.compile(r"\bmodel size:\s+(?P<mib>[0-9.]+) MiB")
_CLIP_COMPUTE = re.compile(r"(?P<buffer>\S+) compute buffer size =\s+(?P<mib>[0-9.]+) MiB")


@dataclass
class ProjectorBuffers:
    """What mtmd logged while it loaded a vision projector: its weights, on the device
    its backend names, and its compute buffers (the last reservation wins: mtmd reserves
    again without flash attention when a backend cannot do it)."""

    weights: int = 0
    device: DeviceID | None = None
    graph: dict[DeviceID | None, int] = field(default_factory=dict)
    device_map: Mapping[DeviceID, DeviceID] = field(default_factory=dict)

    def feed(self, line: str) -> None:
        if match := _CLIP_BACKEND.search(line):
            self.device = self._device(match["backend"])
        elif match := _CLIP_MODEL.search(line):
            self.weights = round(float(match["mib"]) * _MIB)
        elif match := _CLIP_COMPUTE.search(line):
            self.graph[self._device(match["buffer"])] = round(float(match["mib"]) * _MIB)

    def _device(self, name: str) -> DeviceID | None:
        device = device_of_buffer(name)
        return self.device_map.get(device, device) if device is not None else None
