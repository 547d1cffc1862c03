"""NVIDIA GPUs, as NVML reports them.

NVML numbers devices in PCI bus order; CUDA's default order is fastest first.
IDs here follow ``CUDA_VISIBLE_DEVICES`` applied to NVML's order, so runners
should be started with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for the two to agree.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from pollama.devices._visible import visible_indices
from pollama.devices.types import DeviceID, DeviceInfo

logger = logging.getLogger(__name__)


def nvidia_gpus(
    nvml: Any | None = None, environ: Mapping[str, str] | None = None
) -> list[DeviceInfo]:
    """The NVIDIA GPUs CUDA would show this process; [] when there is no driver.

    ``nvml`` is anything shaped like the ``pynvml`` module (the default),
    including its ``NVMLError`` class; ``environ`` defaults to ``os.environ``.
    """
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            logger.debug("NVML bindings not installed; no NVIDIA GPUs")
            return []
    env = os.environ if environ is None else environ
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        logger.debug("NVML unavailable; no NVIDIA GPUs error=%r", str(exc))
        return []
    try:
        return _devices(nvml, env.get("CUDA_VISIBLE_DEVICES"))
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            logger.debug("nvmlShutdown failed error=%r", str(exc))


def _devices(nvml: Any, visible: str | None) -> list[DeviceInfo]:
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        logger.warning("cannot count NVIDIA GPUs error=%r", str(exc))
        return []
    driver = _driver_version(nvml)
    devices = []
    # The ordinal is the CUDA device number even when a device is skipped
    # below: CUDA still counts it, so the others must keep their numbers.
    for ordinal, index in enumerate(visible_indices(visible, count, lambda i: _uuid(nvml, i))):
        try:
            devices.append(_device(nvml, index, str(ordinal), driver))
        except nvml.NVMLError as exc:
            logger.warning("skipping NVIDIA GPU index=%d error=%r", index, str(exc))
    return devices


def _device(nvml: Any, index: int, ordinal: str, driver: tuple[int, int]) -> DeviceInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return DeviceInfo(
        id=DeviceID("CUDA", ordinal),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        total_memory=int(memory.total),
        free_memory=int(memory.free),
        compute_major=int(major),
        compute_minor=int(minor),
        integrated=_integrated(nvml, handle),
        driver_major=driver[0],
        driver_minor=driver[1],
    )


def _driver_version(nvml: Any) -> tuple[int, int]:
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
    except nvml.NVMLError as exc:
        logger.debug("no CUDA driver version error=%r", str(exc))
        return 0, 0
    return version // 1000, version % 1000 // 10  # 12040 is CUDA 12.4


def _integrated(nvml: Any, handle: Any) -> bool:
    # Not every NVML binding has this query; a discrete GPU is the safe guess.
    query = getattr(nvml, "nvmlDeviceGetIsIntegrated", None)
    if query is None:
        return False
    try:
        return bool(query(handle))
    except nvml.NVMLError:
        return False


def _uuid(nvml: Any, index: int) -> str | None:
    try:
        return _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index)))
    except nvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value
