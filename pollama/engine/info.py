"""What a llama.cpp build says about itself (reported by the probe child, kept with verdicts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineDevice:
    name: str
    description: str
    kind: str
    """cpu | gpu | igpu | accel."""


@dataclass(frozen=True)
class EngineInfo:
    version: str
    """llama-cpp-python's version as the imported package reports it."""
    system_info: str
    """``llama_print_system_info()``: the compiled CPU features, as llama.cpp prints them."""
    cpu_features: tuple[str, ...] = ()
    """Compiled-in CPU features (``ggml_cpu_has_*``): AVX2, AVX512, AMX_INT8, NEON, …"""
    extra_buffers: tuple[str, ...] = ()
    """The CPU backend's extra buffer types, in the order llama.cpp tries them."""
    backends: tuple[str, ...] = ()
    devices: tuple[EngineDevice, ...] = field(default_factory=tuple)
    gpu_offload: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "system_info": self.system_info,
            "cpu_features": list(self.cpu_features),
            "extra_buffers": list(self.extra_buffers),
            "backends": list(self.backends),
            "devices": [
                {"name": d.name, "description": d.description, "kind": d.kind} for d in self.devices
            ],
            "gpu_offload": self.gpu_offload,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EngineInfo:
        """Raises KeyError/TypeError/ValueError on a body of the wrong shape."""
        return cls(
            version=str(body["version"]),
            system_info=str(body["system_info"]),
            cpu_features=tuple(str(f) for f in body.get("cpu_features", ())),
            extra_buffers=tuple(str(b) for b in body.get("extra_buffers", ())),
            backends=tuple(str(b) for b in body.get("backends", ())),
            devices=tuple(
                EngineDevice(str(d["name"]), str(d["description"]), str(d["kind"]))
                for d in body.get("devices", ())
            ),
            gpu_offload=bool(body.get("gpu_offload", False)),
        )
