"""Memory figures and layouts as the runner protocol carries them (``wire`` re-exports
these): ``BackendMemory`` in a ``LoadResponse`` and ``GET /memory``, a ``Layout`` in a
``LoadRequest``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from pollama.devices.types import DeviceID
from pollama.memory.layout import GPULayers, Layout
from pollama.memory.types import BackendMemory, DeviceMemory, DraftMemory, ProjectorMemory


def layout_to_json(layout: Layout) -> list[dict[str, Any]]:
    return [
        {"device": {"library": g.device.library, "id": g.device.id}, "layers": list(g.layers)}
        for g in layout.gpus
    ]


def layout_from_json(body: Sequence[Mapping[str, Any]]) -> Layout:
    return Layout(
        tuple(GPULayers(_device(g["device"]), tuple(int(x) for x in g["layers"])) for g in body)
    )


def memory_to_json(memory: BackendMemory) -> dict[str, Any]:
    return {
        "input_weights": memory.input_weights,
        "cpu": _device_memory_to_json(memory.cpu),
        "gpus": [_device_memory_to_json(g) for g in memory.gpus],
        "tied_output": memory.tied_output,
        "projector": _projector_to_json(memory.projector),
        "draft": asdict(memory.draft) if memory.draft is not None else None,
    }


def memory_from_json(body: Mapping[str, Any]) -> BackendMemory:
    return BackendMemory(
        input_weights=int(body["input_weights"]),
        cpu=_device_memory_from_json(body["cpu"]),
        gpus=tuple(_device_memory_from_json(g) for g in body.get("gpus", ())),
        tied_output=int(body.get("tied_output", 0)),
        projector=_projector_from_json(body.get("projector")),
        draft=_draft_from_json(body.get("draft")),
    )


def _draft_from_json(body: Mapping[str, Any] | None) -> DraftMemory | None:
    if not body:
        return None
    return DraftMemory(int(body["weights"]), int(body["cache"]), int(body["graph"]))


def _projector_to_json(projector: ProjectorMemory | None) -> dict[str, Any] | None:
    if projector is None:
        return None
    device = projector.device
    return {
        "weights": projector.weights,
        "graph": projector.graph,
        "device": {"library": device.library, "id": device.id} if device else None,
    }


def _projector_from_json(body: Mapping[str, Any] | None) -> ProjectorMemory | None:
    if not body:
        return None
    device = body.get("device")
    return ProjectorMemory(
        weights=int(body["weights"]),
        graph=int(body["graph"]),
        device=_device(device) if device else None,
    )


def _device_memory_to_json(mem: DeviceMemory) -> dict[str, Any]:
    device = {"library": mem.device.library, "id": mem.device.id} if mem.device else None
    return {
        "name": mem.name,
        "device": device,
        "weights": list(mem.weights),
        "cache": list(mem.cache),
        "graph": mem.graph,
    }


def _device_memory_from_json(body: Mapping[str, Any]) -> DeviceMemory:
    device = body.get("device")
    return DeviceMemory(
        name=str(body["name"]),
        device=_device(device) if device else None,
        weights=tuple(int(x) for x in body["weights"]),
        cache=tuple(int(x) for x in body["cache"]),
        graph=int(body.get("graph", 0)),
    )


def _device(body: Mapping[str, Any]) -> DeviceID:
    return DeviceID(str(body["library"]), str(body["id"]))
