"""A simulated GPU inventory, so layout and scheduling run without the hardware.

Grammar (``POLLAMA_GPUS``)::

    spec     = entry ("," entry)*
    entry    = LIBRARY ":" TOTAL (":" option)*
    option   = "free=" SIZE | "name=" TEXT | "cc=" MAJOR["." MINOR] | "integrated"

- LIBRARY is ``cuda``, ``rocm``, ``metal`` or ``vulkan``, in any case.
- TOTAL and SIZE are sizes as ``parse_size`` reads them: ``24GiB``, ``8GB``,
  ``512MiB``, ``1073741824``. TOTAL must be positive; ``free`` (default: TOTAL)
  may not exceed it.
- ``name`` is free text without ``,`` or ``:``; default ``Simulated CUDA GPU``.
- ``cc`` is the compute capability; default 8.9 for cuda, 0.0 otherwise.
- ``integrated`` marks a GPU that shares system memory.
- Each option may appear once. Whitespace around entries and fields is ignored.

A list of strings is read as if they were joined with commas. IDs are given
per library in order: ``cuda:24GiB,rocm:16GiB,cuda:8GiB`` is CUDA:0, ROCm:0,
CUDA:1. Examples::

    cuda:24GiB,cuda:8GiB
    rocm:16GiB:free=12GiB
    cuda:8GiB:integrated:name=iGPU
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pollama.devices.types import DeviceID, DeviceInfo
from pollama.errors import InvalidDeviceSpec
from pollama.units import parse_size

LIBRARIES = {"cuda": "CUDA", "rocm": "ROCm", "metal": "Metal", "vulkan": "Vulkan"}
_DEFAULT_CC = {"CUDA": (8, 9)}
_CC = re.compile(r"(\d+)(?:\.(\d+))?")


def parse_gpu_specs(specs: str | Sequence[str]) -> list[DeviceInfo]:
    """Parse a simulated inventory; raises InvalidDeviceSpec naming the bad entry."""
    parts = [specs] if isinstance(specs, str) else list(specs)
    entries = [entry.strip() for part in parts for entry in part.split(",")]
    if not any(entries):
        raise InvalidDeviceSpec("empty GPU spec: expected e.g. cuda:24GiB,cuda:8GiB")
    counts: dict[str, int] = {}
    devices = []
    for entry in entries:
        if not entry:
            raise InvalidDeviceSpec(f"empty entry in GPU spec {','.join(parts)!r}")
        library = _library(entry)
        devices.append(_parse_entry(entry, library, str(counts.get(library, 0))))
        counts[library] = counts.get(library, 0) + 1
    return devices


def _library(entry: str) -> str:
    raw = entry.split(":", 1)[0].strip()
    try:
        return LIBRARIES[raw.lower()]
    except KeyError:
        raise _error(
            entry, f"unknown library {raw!r} (expected cuda, rocm, metal or vulkan)"
        ) from None


def _parse_entry(entry: str, library: str, index: str) -> DeviceInfo:
    fields = [field.strip() for field in entry.split(":")]
    if len(fields) < 2 or not fields[1]:
        raise _error(entry, "missing total memory (expected LIBRARY:SIZE, e.g. cuda:24GiB)")
    total = _size(entry, "total memory", fields[1])
    if total <= 0:
        raise _error(entry, "total memory must be positive")
    options: dict[str, str | None] = {}
    for option in fields[2:]:
        key, sep, value = (s.strip() for s in option.partition("="))
        if key in options:
            raise _error(entry, f"option {key!r} given twice")
        options[key] = value if sep else None

    free = total
    name = f"Simulated {library} GPU"
    major, minor = _DEFAULT_CC.get(library, (0, 0))
    integrated = False
    for key, given in options.items():
        if key == "integrated":
            if given is not None:
                raise _error(entry, "'integrated' is a flag and takes no value")
            integrated = True
        elif key not in ("free", "name", "cc"):
            raise _error(entry, f"unknown option {key!r} (expected free, name, cc or integrated)")
        elif not given:
            raise _error(entry, f"option {key!r} needs a value ({key}=...)")
        elif key == "free":
            free = _size(entry, "free memory", given)
            if free > total:
                raise _error(entry, f"free memory {given} is more than total {fields[1]}")
        elif key == "name":
            name = given
        else:
            if not (match := _CC.fullmatch(given)):
                raise _error(entry, f"bad compute capability {given!r} (expected e.g. cc=8.6)")
            major, minor = int(match.group(1)), int(match.group(2) or 0)
    return DeviceInfo(
        id=DeviceID(library, index),
        name=name,
        total_memory=total,
        free_memory=free,
        compute_major=major,
        compute_minor=minor,
        integrated=integrated,
        simulated=True,
    )


def _size(entry: str, what: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise _error(entry, f"bad {what} {text!r} (expected e.g. 24GiB, 512MiB, 8GB)") from None


def _error(entry: str, problem: str) -> InvalidDeviceSpec:
    return InvalidDeviceSpec(f"invalid GPU spec entry {entry!r}: {problem}")
